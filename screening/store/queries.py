"""Named queries: the .sql files in schema/queries and their typed parameters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmscreen.screening.errors import QueryError
from plmscreen.screening.store.layout import QUERIES_DIR

# Named queries


_PARAM_LINE = re.compile(r"^--\s*param:\s*(\w+)\s+(\w+)(?:\s*=\s*(\S+))?\s*(?:--\s*(.*))?$")
_PARAM_TYPES = {"VARCHAR": str, "INTEGER": int, "BIGINT": int, "DOUBLE": float, "BOOLEAN": bool}


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: str  # VARCHAR, INTEGER, BIGINT, DOUBLE or BOOLEAN
    default: Any
    required: bool
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[QueryParam, ...]
    sql: str
    path: Path

    def usage(self) -> str:
        params = " ".join(f"{p.name}=<{p.type.lower()}>" if p.required else f"[{p.name}={p.default}]" for p in self.params)
        return f"{self.name} {params}".strip()


def _convert(value: Any, param: QueryParam, query_name: str) -> Any:
    if value is None:
        return None
    target = _PARAM_TYPES[param.type]
    if isinstance(value, str) and target is not str:
        text = value.strip()
        if text.lower() in ("null", "none", ""):
            return None
        try:
            if target is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return target(text)
        except ValueError:
            raise QueryError(f"query {query_name}: parameter {param.name} must be {param.type}, got {value!r}") from None
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise QueryError(f"query {query_name}: parameter {param.name} must be {param.type}, got {value!r}")
    return value


def _parse_named_query(path: Path) -> NamedQuery:
    from plmscreen.screening.score.metrics import FlagRule

    # @FLAG_RULE(row, rule)@ is the flag rule's one definition (FlagRule.sql), rendered in place.
    text = re.sub(r"@FLAG_RULE\((\w+), *(\w+)\)@", lambda m: FlagRule.sql(m[1], m[2]), path.read_text())
    description, params = [], []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM_LINE.match(line)
        if match:
            name, type_, default, help_ = match.groups()
            type_ = type_.upper()
            if type_ not in _PARAM_TYPES:
                raise ValueError(f"{path}: parameter {name} has unknown type {type_}")
            param = QueryParam(name, type_, None, default is None, (help_ or "").strip())
            if default is not None and default.upper() != "NULL":
                param = QueryParam(name, type_, _convert(default, param, path.stem), False, param.help)
            params.append(param)
        else:
            description.append(line.lstrip("-").strip())
    used = set(re.findall(r"\$([A-Za-z_]\w*)", text))
    declared = {p.name for p in params}
    if used != declared:
        raise ValueError(f"{path}: parameters used {sorted(used)} but declared {sorted(declared)}")
    return NamedQuery(path.stem, " ".join(d for d in description if d), tuple(params), text, path)


def named_queries() -> dict[str, NamedQuery]:
    """The named queries under ``schema/queries/*.sql`` by name (the file's stem)."""
    return {q.name: q for q in (_parse_named_query(p) for p in sorted(QUERIES_DIR.glob("*.sql")))}


def bind_params(named: NamedQuery, values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values (strings from the CLI, or Python values) checked and typed for ``named``."""
    known = {p.name: p for p in named.params}
    unknown = sorted(set(values) - set(known))
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise QueryError(f"query {named.name}: unknown parameter {', '.join(unknown)} (it takes: {takes})")
    bound = {}
    for name, param in known.items():
        if name in values:
            bound[name] = _convert(values[name], param, named.name)
        elif param.required:
            raise QueryError(f"query {named.name}: parameter {name} is required ({param.help or param.type})")
        else:
            bound[name] = param.default
        if bound[name] is None and param.required:
            raise QueryError(f"query {named.name}: parameter {name} is required ({param.help or param.type})")
    return bound
