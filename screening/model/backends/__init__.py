"""Model families behind one scoring interface (issue 14): fair-esm ESM-2 (the native path),
ESM-2 and ESM C through Hugging Face transformers, and CARP. See ``base.Backend``."""

from plmscreen.screening.model.backends.base import Backend, weights_sha256
from plmscreen.screening.model.backends.resolve import FAMILIES, load_backend, resolve_model

__all__ = ["Backend", "FAMILIES", "load_backend", "resolve_model", "weights_sha256"]
