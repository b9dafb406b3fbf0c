"""Prefect flows over ``screening``: orchestration only, no scoring code here."""
