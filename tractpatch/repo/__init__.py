"""Data repository: registry (SQL), data IDs, instruments, file layout and ingest."""
from .dataid import DataIdSpec, parse_id_args, parse_id_value, DATA_ID_KEYS
from .registry import Registry
from .repository import Repository
from .instrument import Instrument, load_instrument

__all__ = ["DataIdSpec", "parse_id_args", "parse_id_value", "DATA_ID_KEYS", "Registry",
           "Repository", "Instrument", "load_instrument"]
