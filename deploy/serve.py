"""Single-machine scheduled screens without a work pool: ``python deploy/serve.py``.

Serves the screen-proteome flow with a nightly cron schedule; the Prefect server (or Cloud)
named by PREFECT_API_URL shows the runs. Input, store and model come from the environment.
"""

import os

from plmscreen.flows.screen import screen_proteome

if __name__ == "__main__":
    screen_proteome.serve(
        name="local-nightly",
        cron=os.environ.get("PLMSCREEN_CRON", "0 2 * * *"),
        parameters={
            "input": os.environ.get("PLMSCREEN_INPUT", "examples/sample.fasta"),
            "store": os.environ.get("PLMSCREEN_STORE", "plmscreen-store"),
            "settings": {  # one ScreenSettings; omitted fields keep their defaults
                "model": os.environ.get("PLMSCREEN_MODEL", "plmscreen-mini"),
                "weights_dir": os.environ.get("PLMSCREEN_WEIGHTS_DIR"),
            },
            "skip_invalid": True,
        },
    )
