"""Flow-Factory training YAML files as ffjax configs.

    python -m ffjax.train --config examples/grpo/lora/flux1/default.yaml --check_config
    python -m ffjax.train --config run.yaml --workdir /runs/x \
        --config.model.path=/data/FLUX.1-dev --config.rewards.pickscore_rank.args.path=/data/PickScore_v1

`load(path)` reads a Flow-Factory YAML in either schema of its examples (older:
a0b2bc5, `data.dataset_dir` and optimizer keys under `train`; newer: b30dc00, a
`data.datasets` list and an `optimizers` list) and maps every key through the one table
in `ffjax.ff_yaml.table`, starting from `configs.base_config()` and the algorithm's own
defaults (`configs.set_algorithm`). Keys the YAML leaves out take Flow-Factory's
defaults, so the run is the one Flow-Factory would make of the file. A key ffjax cannot
honour, an unknown key, a model family or reward ffjax does not have: `FFYamlError`
(a ConfigError, exit 2), one line naming the key and why. Hub IDs (model and reward
folders) are kept as given; `ffjax.local_paths` refuses them when the run loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from typing import Any

from ffjax import configs
from ffjax.ff_yaml import rules, transforms
from ffjax.ff_yaml.rules import Refused
from ffjax.ff_yaml.table import IGNORED, LAUNCHER, LISTS, MISSING, ROWS, SECTIONS, Row

SUFFIXES = (".yaml", ".yml")
TOP_LEVEL = {r.ff for r in ROWS if "." not in r.ff and "[]" not in r.ff}


class FFYamlError(configs.ConfigError):
    """A Flow-Factory YAML that ffjax cannot run as written (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One mapped key: Flow-Factory key and value, what it set in ffjax, and how."""

    ff: str
    value: Any
    default: bool  # the YAML left it out: Flow-Factory's default
    ffjax: dict[str, Any]
    status: str  # "mapped", LAUNCHER or IGNORED
    note: str


@dataclasses.dataclass(frozen=True)
class Mapping:
    """The ffjax config made of a Flow-Factory YAML, and how each key was mapped."""

    config: configs.ConfigDict
    lines: tuple[Line, ...]
    notes: tuple[str, ...]


@dataclasses.dataclass
class _Context:
    """What a row's transform may read: the whole document and the entry it is in."""

    doc: dict
    trainer: str
    notes: list[str]
    section: str = ""
    alias: str = ""
    entry: dict = dataclasses.field(default_factory=dict)

    @property
    def train(self) -> dict:
        return self.doc.get("train") or {}

    def get(self, key: str, default: Any = None) -> Any:
        """The YAML's value of a dotted `section.key` (or a top-level key), else `default`."""
        sec, _, name = key.rpartition(".")
        node = self.doc.get(sec) if sec else self.doc
        return node.get(name, default) if isinstance(node, dict) else default

    @functools.cached_property
    def _geometry(self) -> rules.Geometry:
        return rules.geometry(
            self.trainer,
            self.train,
            self.doc.get("scheduler") or {},
            int(self.doc.get("num_processes", 1)),
            str(self.get("data.sampler_type", "auto")),
        )

    def geometry(self) -> dict[str, Any]:
        g = self._geometry
        return {
            "data.prompts_per_epoch": g.prompts_per_epoch,
            "data.group_size": g.group_size,
            "train.micro_batch_size": g.micro_batch_size,
            "sampling.batch_size": g.micro_batch_size,
            "train.grad_accum_steps": g.grad_accum_steps,
        }

    @functools.cached_property
    def _ema(self) -> dict[str, Any]:
        return rules.ema(self.train)

    def ema(self) -> dict[str, Any]:
        return dict(self._ema)


def is_yaml(path: str) -> bool:
    """Whether a --config value names a YAML file (by its suffix)."""
    return str(path).lower().endswith(SUFFIXES)


def load(path: str | os.PathLike) -> Mapping:
    """Reads and maps a Flow-Factory YAML file; FFYamlError on anything it cannot run."""
    import yaml

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise FFYamlError(f"cannot read --config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise FFYamlError(
            f"--config {path} is not valid YAML: {' '.join(str(e).split())}"
        ) from None
    return map_document(doc, str(path))


def map_document(doc: Any, source: str = "") -> Mapping:
    """The ffjax config of a parsed Flow-Factory YAML document (see the module docstring)."""
    where = f"{source}: " if source else ""
    if not isinstance(doc, dict):
        raise FFYamlError(f"{where}a Flow-Factory config is a mapping of sections")
    trainer = str((doc.get("train") or {}).get("trainer_type", "grpo")).lower()
    names = sorted({t for r in ROWS for t in r.trainers})
    if trainer not in names:
        raise FFYamlError(
            f"{where}train.trainer_type={trainer!r}: ffjax has the algorithms {', '.join(names)}"
        )
    ctx = _Context(doc, trainer, [])
    model_type = (doc.get("model") or {}).get("model_type", "flux1")
    try:  # the family first: its own keys would otherwise read as unknown ones
        transforms.model_type(model_type, ctx)
    except Refused as e:
        raise FFYamlError(f"{where}model.model_type={model_type!r}: {e}") from None
    try:  # read by several rows: refused once, as the batch geometry
        ctx.geometry()
    except (Refused, TypeError, ValueError) as e:
        raise FFYamlError(f"{where}train batch geometry: {e}") from None
    lines: list[Line] = []
    values: dict[str, Any] = {}
    for index, row, value, entry, default in _items(doc, trainer, where):
        if row.to in (LAUNCHER, IGNORED):
            lines.append(Line(_label(row.ff, index), value, default, {}, row.to, row.note))
            continue
        here = ctx
        if index is not None:
            sec = row.ff.split("[]")[0]
            alias = str(entry.get("name", "default"))
            here = dataclasses.replace(ctx, section=sec, alias=alias, entry=entry)
        try:
            out = row.to(value, here)
        except Refused as e:
            raise FFYamlError(f"{where}{_label(row.ff, index)}={value!r}: {e}") from None
        except (TypeError, ValueError, IndexError) as e:
            raise FFYamlError(
                f"{where}{_label(row.ff, index)}={value!r} is not valid: {e}"
            ) from None
        values.update(out)
        lines.append(Line(_label(row.ff, index), value, default, out, "mapped", row.note))
    config = _build(trainer, values, where)
    return Mapping(config, tuple(lines), tuple(dict.fromkeys(ctx.notes)))


def _label(ff: str, index: int | None) -> str:
    return ff if index is None else ff.replace("[]", f"[{index}]")


def _present(doc: dict) -> set[str]:
    keys = {k for k in doc if k not in SECTIONS}
    for sec in SECTIONS:
        if isinstance(doc.get(sec), dict):
            keys |= {f"{sec}.{k}" for k in doc[sec]}
    return keys


def _row_for(key: str, trainer: str, where: str) -> Row:
    rows = [r for r in ROWS if r.ff == key]
    for r in rows:
        if trainer in r.trainers:
            return r
    if rows:  # another trainer's key: Flow-Factory keeps it in extra_kwargs, unread
        return Row(key, IGNORED, f"not read by trainer_type {trainer!r}", trainers=(trainer,))
    known = sorted({r.ff for r in ROWS})
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise FFYamlError(
        f"{where}unknown Flow-Factory key {key} (not in its a0b2bc5 / b30dc00 schema as"
        f" ffjax maps it){hint}"
    )


def _items(doc: dict, trainer: str, where: str):
    """(entry index or None, row, value, entry, from default) for every key to map, in
    table order; keys the YAML leaves out come with Flow-Factory's default."""
    found: list[tuple] = []
    first = {}
    for i, r in enumerate(ROWS):
        first.setdefault(r.ff, i)
    order = {id(r): i for i, r in enumerate(ROWS)}
    present = _present(doc)
    for sec in SECTIONS:
        node = doc.get(sec)
        if node is not None and not isinstance(node, dict):
            raise FFYamlError(f"{where}{sec} must be a mapping of keys, got {node!r}")
    for key in sorted(present - set(LISTS)):
        section, _, name = key.rpartition(".")
        row = _row_for(key, trainer, where)
        found.append((order.get(id(row), first.get(key, 0)), None, row, doc[section][name] if section else doc[key], {}, False))  # fmt: skip
    for row in ROWS:
        if "[]" in row.ff or row.ff in present or row.default is MISSING:
            continue
        if trainer in row.trainers:
            found.append((order[id(row)], None, row, row.default, {}, True))
    for sec in LISTS:
        if doc.get(sec) is None:
            continue
        entries = doc[sec] if isinstance(doc[sec], list) else [doc[sec]]
        if sec == "optimizers":
            row = _row_for("optimizers", trainer, where)
            found.append((order[id(row)], None, row, doc[sec], {}, False))
        names = [e.get("name", "default") for e in entries if isinstance(e, dict)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice and sec != "optimizers":
            raise FFYamlError(f"{where}{sec}: the name {twice[0]!r} is given twice (ffjax's alias)")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise FFYamlError(f"{where}{sec}[{i}] must be a mapping of keys, got {entry!r}")
            for name in entry:
                row = _row_for(f"{sec}[].{name}", trainer, where)
                found.append((order[id(row)], i, row, entry[name], entry, False))
            for row in ROWS:
                name = row.ff.partition("[].")[2]
                if row.ff.startswith(f"{sec}[].") and name not in entry and row.default is not MISSING:  # fmt: skip
                    found.append((order[id(row)], i, row, row.default, entry, True))
    found.sort(key=lambda f: (f[0], -1 if f[1] is None else f[1]))
    return [f[1:] for f in found]


def _build(trainer: str, values: dict[str, Any], where: str) -> configs.ConfigDict:
    """base_config + the algorithm's defaults, then every mapped value."""
    c = configs.base_config()
    configs.set_algorithm(c, trainer)
    rewards: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in values.items():
        section = key.split(".")[0]
        if section in ("rewards", "eval_rewards"):
            _, alias, *rest = key.split(".")
            entry = rewards.setdefault((section, alias), {"args": {}})
            if rest[0] == "args":
                entry["args"][rest[1]] = value
            else:
                entry[rest[0]] = value
            continue
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        try:
            node[leaf] = value
        except (TypeError, KeyError) as e:  # a table value of the wrong type: a bug here
            raise FFYamlError(f"{where}cannot set config.{key}={value!r}: {e}") from None
    for (section, alias), entry in rewards.items():
        if "name" not in entry:
            raise FFYamlError(f"{where}{section} entry {alias!r} has no reward_model")
        configs.add_reward(
            c, alias, entry["name"], entry.get("weight", 1.0), section=section, **entry["args"]
        )
    return c


def table(mapping: Mapping) -> str:
    """The mapping as a text table: Flow-Factory key, value, ffjax key, value."""
    rows = [("Flow-Factory key", "value", "ffjax key", "value")]
    for line in mapping.lines:
        value = f"{line.value!r}" + (" (default)" if line.default else "")
        if line.ffjax:
            for i, (k, v) in enumerate(line.ffjax.items()):
                rows.append((line.ff if i == 0 else "", value if i == 0 else "", k, repr(v)))
        else:
            what = line.status if line.status != "mapped" else "(checked; sets nothing)"
            rows.append((line.ff, value, what, line.note))
    widths = [min(max(len(r[i]) for r in rows), 44) for i in range(3)]
    text = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    )
    notes = "".join(f"\nnote: {n}" for n in mapping.notes)
    return text + notes
