"""plmscreen's library: FASTA in, masked-LM scores and repeat partners out. No Prefect, no Dask."""

__version__ = "0.1.0"
