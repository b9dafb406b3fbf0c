"""The screen-proteome flow on this node's GPUs: dask-cuda, one worker per visible GPU.

Entry point of the GPU deployments in deploy/prefect.yaml (the node needs ``pip install plmscreen[gpu]``).
"""

from plmscreen.flows.clusters import gpu_task_runner
from plmscreen.flows.screen import screen_proteome

screen_proteome_gpu = screen_proteome.with_options(name="screen-proteome-gpu", task_runner=gpu_task_runner())
