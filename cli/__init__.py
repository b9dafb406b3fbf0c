"""The plmscreen command line: on top of the library (``plmscreen.screening``) and the flows."""
