#!/usr/bin/env python3
"""Checks OCSF 1.5.0 events, one JSON object per line, as rtid writes them.

Usage: validate.py [FILE ...]      (standard input when no file is named, or "-")

Each line is checked against the ocsf-emitter model of its class (picked by
class_uid), more strictly than ocsf-emitter alone would:

  * pydantic strict mode: no coercion (the string "1" is not the integer 1);
  * no attribute the class or object does not define. The generated models
    accept any extra key, so a misspelt attribute would otherwise pass; an
    attribute of an OCSF profile (security_control, host, container) is
    accepted only when the event names the profile in metadata.profiles, and
    its value is type-checked too (the generated models leave profiles out);
  * ocsf_emitter.validate's invariants: type_uid = class_uid * 100 +
    activity_id, category and class names, metadata.version "1.5.0";
  * the captions of the security_control ids (action, disposition) match.

Prints one line per problem ("FILE:LINE: ..."), then "N valid". Exits 1 when
any line failed, 2 when no line was read, 3 when ocsf-emitter is missing.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing

PIP_HINT = "pip install ocsf-emitter==0.3.0"

try:
    import pydantic
    import ocsf_emitter
    from ocsf_emitter import defaults, models
except ImportError as missing:  # the integration tests must fail, not skip
    print(f"ocsf-emitter is not installed ({missing}): {PIP_HINT}", file=sys.stderr)
    sys.exit(3)


class ActionId(enum.IntEnum):
    """security_control action_id (OCSF 1.5.0 profiles/security_control.json)."""

    UNKNOWN = 0
    ALLOWED = 1
    DENIED = 2
    OBSERVED = 3
    MODIFIED = 4
    OTHER = 99


ACTION_CAPTIONS = {0: "Unknown", 1: "Allowed", 2: "Denied", 3: "Observed", 4: "Modified", 99: "Other"}

# OCSF 1.5.0 dictionary.json, disposition_id.
DISPOSITION_CAPTIONS = {
    0: "Unknown", 1: "Allowed", 2: "Blocked", 3: "Quarantined", 4: "Isolated", 5: "Deleted",
    6: "Dropped", 7: "Custom Action", 8: "Approved", 9: "Restored", 10: "Exonerated",
    11: "Corrected", 12: "Partially Corrected", 13: "Uncorrected", 14: "Delayed",
    15: "Detected", 16: "No Action", 17: "Logged", 18: "Tagged", 19: "Alert", 20: "Count",
    21: "Reset", 22: "Captcha", 23: "Challenge", 24: "Access Revoked", 25: "Rejected",
    26: "Unauthorized", 27: "Error", 99: "Other",
}
DispositionId = enum.IntEnum("DispositionId", {f"ID_{k}": k for k in DISPOSITION_CAPTIONS})

# The profile attributes this validator can type-check (OCSF 1.5.0
# profiles/*.json with types from dictionary.json), by profile.
PROFILES: dict[str, dict[str, typing.Any]] = {
    "host": {"actor": models.Actor, "device": models.Device},
    "security_control": {
        "action": str,
        "action_id": ActionId,
        "disposition": str,
        "disposition_id": DispositionId,
        "is_alert": bool,
        "policy": models.Policy,
        "authorizations": list[models.Authorization],
        "attacks": list[models.Attack],
        "malware": list[models.Malware],
        "malware_scan_info": models.MalwareScanInfo,
        "confidence": str,
        "confidence_id": models.ConfidenceId,
        "confidence_score": int,
        "risk_details": str,
        "risk_level": str,
        "risk_level_id": models.RiskLevelId,
        "risk_score": int,
    },
    "container": {"container": models.Container, "namespace_pid": int},
}

# Which objects a profile extends besides every event class (base_event.json
# lists host and security_control; process.json lists container).
EVENT_PROFILES = ("host", "security_control")
OBJECT_PROFILES: dict[type, tuple[str, ...]] = {models.Process: ("container",)}

# Free-form objects: whatever they hold is the producer's business.
FREE_FORM = (models.Object,)


def model_for(class_uid: typing.Any) -> type[pydantic.BaseModel] | None:
    spec = defaults.class_spec_by_uid(class_uid) if isinstance(class_uid, int) else None
    return getattr(models, spec.model_name) if spec else None


def json_key(name: str, field: typing.Any) -> str:
    return field.alias or name


def inner_types(annotation: typing.Any) -> list[typing.Any]:
    """The object types an annotation may hold: unwraps Optional, unions and lists."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in inner_types(arg)]
    if origin is list:
        return inner_types(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return []


def unknown_attributes(value: typing.Any, annotation: typing.Any, where: str, declared: set[str], is_event: bool = False) -> list[str]:
    """Keys no model or declared profile defines, below `value` typed `annotation`."""
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_attributes(item, annotation, f"{where}[{i}]", declared)]
    candidates = inner_types(annotation)
    if not isinstance(value, dict) or not candidates:
        return []
    model = candidates[0]
    if issubclass(model, FREE_FORM):
        return []
    fields = {json_key(name, field): field.annotation for name, field in model.model_fields.items()}
    applicable = EVENT_PROFILES if is_event else OBJECT_PROFILES.get(model, ())
    problems = []
    for key, item in value.items():
        path = f"{where}.{key}" if where else key
        if key in fields:
            problems += unknown_attributes(item, fields[key], path, declared)
            continue
        profile = next((p for p in applicable if key in PROFILES[p]), None)
        if profile is None:
            problems.append(f"{path}: not an attribute of {model.__name__} (nor of its profiles)")
        elif profile not in declared:
            problems.append(f"{path}: belongs to profile {profile!r}, which metadata.profiles does not list")
        else:
            problems += profile_value_errors(item, PROFILES[profile][key], path)
            problems += unknown_attributes(item, PROFILES[profile][key], path, declared)
    return problems


def profile_value_errors(value: typing.Any, annotation: typing.Any, where: str) -> list[str]:
    try:
        pydantic.TypeAdapter(annotation).validate_json(json.dumps(value), strict=True)
    except pydantic.ValidationError as error:
        return [f"{where}{loc_suffix(e['loc'])}: {e['msg']}" for e in error.errors()]
    return []


def loc_suffix(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def caption_errors(event: dict) -> list[str]:
    problems = []
    for id_key, name_key, captions in (
        ("action_id", "action", ACTION_CAPTIONS),
        ("disposition_id", "disposition", DISPOSITION_CAPTIONS),
    ):
        id_value, name = event.get(id_key), event.get(name_key)
        if isinstance(id_value, int) and id_value != 99 and name is not None and name != captions.get(id_value):
            problems.append(f"{name_key}: {name!r} is not the caption of {id_key} {id_value} ({captions.get(id_value)!r})")
    return problems


def check_line(line: str) -> list[str]:
    """Every problem with one event, empty when it is valid."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as error:
        return [f"not JSON: {error}"]
    if not isinstance(event, dict):
        return ["not a JSON object"]
    model = model_for(event.get("class_uid"))
    if model is None:
        return [f"class_uid: {event.get('class_uid')!r} is not an OCSF 1.5.0 class ocsf-emitter knows"]
    try:
        instance = model.model_validate_json(line, strict=True)
    except pydantic.ValidationError as error:
        return [f"{model.__name__}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    problems = []
    try:
        ocsf_emitter.validate(instance)
    except ocsf_emitter.InvalidFindingError as error:
        problems += [f"{model.__name__}: {message}" for message in error.field_errors] or [str(error)]
    profiles = event.get("metadata", {}).get("profiles") or []
    problems += unknown_attributes(event, model, "", set(profiles), is_event=True)
    problems += caption_errors(event)
    return problems


def sources(paths: list[str]) -> typing.Iterator[tuple[str, typing.TextIO]]:
    for path in paths or ["-"]:
        if path == "-":
            yield "<stdin>", sys.stdin
        else:
            with open(path, encoding="utf-8") as file:
                yield path, file


def main(paths: list[str]) -> int:
    valid = invalid = 0
    for name, stream in sources(paths):
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            problems = check_line(line)
            for problem in problems:
                print(f"{name}:{number}: {problem}")
            if problems:
                invalid += 1
            else:
                valid += 1
    if invalid:
        print(f"{invalid} invalid")
    print(f"{valid} valid")
    if valid + invalid == 0:
        print("no events read", file=sys.stderr)
        return 2
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
