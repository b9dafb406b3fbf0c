"""Deployment specs: Prefect deployments, cluster specs and production notes (see README.md here)."""
