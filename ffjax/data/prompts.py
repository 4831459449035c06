"""Prompt datasets and the deterministic, resumable K-repeat group sampler.

Sources `load_prompts` reads (the layouts of Flow-Factory and flow_grpo, so their
dataset folders work unchanged):

    prompts.txt                     one prompt per line (stripped; blank lines skipped)
    prompts.jsonl                   one JSON object per line with a "prompt" string;
                                    its other fields are the prompt's metadata (GenEval:
                                    {"tag": ..., "include": [...], "prompt": ...})
    dataset/                        a folder holding the split as <split>.txt,
                                    <split>.jsonl (Flow-Factory) or
                                    <split>_metadata.jsonl (flow_grpo GenEval)
    tfds:<name>[/<config>][:<split>][@<data_dir>]
                                    a TFDS dataset prepared with
                                    file_format='array_record', read by random access
                                    (`tfds.data_source`; no TensorFlow needed) from its
                                    `prompt` Text feature; other features are metadata;
                                    records come in TFDS storage order (shuffled by
                                    key when the dataset was prepared)

Sampling: a stream of prompt indices made of one permutation of all N prompts per
pass, pass p shuffled by `np.random.default_rng([seed, p])`; epoch e takes stream
positions [e*P, (e+1)*P) and repeats each of its P prompts K times (one group each).
An epoch is a function of its index alone, so a resumed run continues exactly where
the interrupted one stopped, with nothing but the epoch number saved. Unlike
flow_grpo's DistributedKRepeatSampler (an independent `randperm(N)[:P]` per epoch),
every prompt is visited once per pass before any prompt repeats.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# Folder layout: the files a split may live in, in the order they are named in messages.
_SPLIT_FILES = ("{split}.jsonl", "{split}_metadata.jsonl", "{split}.txt")
_SUFFIXES = (".txt", ".jsonl")
_TFDS = "tfds:"
_VERSION = re.compile(r"\d+\.\d+\.\d+")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Prompts and their per-prompt metadata (parallel lists), in file order.

    Attributes:
      prompts: the prompt strings.
      metadata: one dict per prompt: the jsonl fields / TFDS features other than
        "prompt" ({} for .txt); passed to rewards alongside the prompt.
      source: where they were read from (a file path or the tfds: spec), for messages.
    """

    prompts: list[str]
    metadata: list[dict[str, Any]]
    source: str = ""

    def __post_init__(self):
        if len(self.prompts) != len(self.metadata):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.metadata)} metadata")

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, indices: Sequence[int] | np.ndarray) -> tuple[list[str], list[dict]]:
        """The prompts and metadata at `indices` (e.g. a sampler's prompt indices)."""
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        return [self.prompts[i] for i in idx], [self.metadata[i] for i in idx]


# --------------------------------------------------------------------------- loading


def load_prompts(path: str | os.PathLike, split: str = "train") -> PromptSet:
    """Reads a prompt set from a .txt / .jsonl file, a dataset folder, or `tfds:...`.

    Args:
      path: a file, a folder in the Flow-Factory / flow_grpo layout, or
        `tfds:<name>[/<config>][:<split>][@<data_dir>]` (see the module docstring).
      split: which split of a folder (`<split>.txt`, `<split>.jsonl`,
        `<split>_metadata.jsonl`) or of a TFDS dataset whose spec names none;
        ignored for a file.

    Raises:
      FileNotFoundError: the path (or the split in a folder, or the TFDS dataset) does
        not exist; the message lists what was looked for.
      ValueError: several files hold the split, an unknown file type, no prompts, a
        jsonl line that is not a JSON object with a string "prompt" (file:line named),
        a non-string prompt.
    """
    spec = os.fspath(path)
    if spec.startswith(_TFDS):
        return _load_tfds(spec, split)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        path = _split_file(path, split)
    elif not os.path.exists(path):
        looked = ", ".join(f"<split>{s}" for s in (*_SUFFIXES, "_metadata.jsonl"))
        raise FileNotFoundError(
            f"prompt path {path!r} does not exist (expected a .txt or .jsonl file, a folder "
            f"holding {looked}, or a 'tfds:<name>[/<config>][:<split>][@<data_dir>]' spec)"
        )
    if path.endswith(".txt"):
        prompts, metadata = _read_txt(path)
    elif path.endswith(".jsonl"):
        prompts, metadata = _read_jsonl(path)
    else:
        raise ValueError(f"{path}: unknown prompt file type; use .txt or .jsonl")
    if not prompts:
        raise ValueError(f"{path}: no prompts (the dataset is empty)")
    return PromptSet(prompts, metadata, source=path)


def _split_file(folder: str, split: str) -> str:
    candidates = [os.path.join(folder, f.format(split=split)) for f in _SPLIT_FILES]
    found = [c for c in candidates if os.path.isfile(c)]
    if len(found) > 1:
        raise ValueError(
            f"split {split!r} of {folder!r} is in several files: {found}; pass the one to "
            "use as the path (data.path=<file>), or remove the others"
        )
    if not found:
        present = sorted(n for n in os.listdir(folder) if n.endswith(_SUFFIXES))
        raise FileNotFoundError(
            f"no {split!r} split in {folder!r}: looked for {candidates}; "
            f"prompt files there: {present or 'none'}"
        )
    return found[0]


def _lines(path: str):
    # utf-8-sig: tolerate the byte-order mark some editors write.
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e


def _read_txt(path: str) -> tuple[list[str], list[dict]]:
    prompts = [s for _, line in _lines(path) if (s := line.strip())]
    return prompts, [{} for _ in prompts]


def _read_jsonl(path: str) -> tuple[list[str], list[dict]]:
    prompts, metadata = [], []
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        if "prompt" not in row:
            raise ValueError(f"{path}:{n}: no 'prompt' field (fields: {sorted(row)})")
        prompt = row.pop("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{path}:{n}: 'prompt' must be a string, got {type(prompt).__name__}")
        prompts.append(prompt)
        metadata.append(row)
    return prompts, metadata


# --------------------------------------------------------------------------- TFDS


def _parse_tfds(spec: str, default_split: str) -> tuple[str, str, str | None]:
    """`tfds:name[/config][:version][:split][@data_dir]` -> (name, split, data_dir)."""
    body, _, data_dir = spec[len(_TFDS) :].partition("@")
    # A split may carry a slice ("train[:10%]") whose ':' is not a separator.
    head, bracket, tail = body.partition("[")
    name, _, split = head.rpartition(":")
    if not name or _VERSION.fullmatch(split):  # no split given: "name" or "name:1.0.0"
        name, split = head, default_split
        if bracket:
            raise ValueError(f"{spec!r}: a split slice needs a split name (e.g. train[:10%])")
    if not name:
        raise ValueError(f"{spec!r}: no dataset name; use tfds:<name>[/<config>]:<split>")
    return name, split + bracket + tail, os.path.expanduser(data_dir) if data_dir else None


def _plain(value: Any) -> Any:
    """A TFDS feature value as plain Python (bytes -> str, arrays -> lists)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.item()) if value.ndim == 0 else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load_tfds(spec: str, split: str) -> PromptSet:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # a core dependency, but say what to do if it is missing
        raise ImportError(
            f"{spec!r} needs tensorflow-datasets: pip install tensorflow-datasets"
        ) from e

    name, split, data_dir = _parse_tfds(spec, split)
    try:
        # download=False: prompt sets are prepared once (e.g. `tfds build
        # --file_format=array_record`), never fetched by every host of a training run.
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        root = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
        base, _, config = name.partition(":")[0].partition("/")
        raise FileNotFoundError(
            f"{spec!r}: TFDS dataset {name!r} not found: looked for a prepared dataset in "
            f"{os.path.join(root, base, config or '<config>', '<version>')} and for a "
            "registered builder of that name"
        ) from None
    except (ValueError, NotImplementedError, AssertionError) as e:
        raise ValueError(f"{spec!r}: cannot read TFDS split {split!r}: {e}") from e

    features = source.dataset_info.features
    if "prompt" not in features:
        raise ValueError(f"{spec!r}: no 'prompt' feature (features: {sorted(features.keys())})")
    if not isinstance(features["prompt"], tfds.features.Text):
        raise ValueError(
            f"{spec!r}: 'prompt' must be a Text feature, got {type(features['prompt']).__name__}"
        )
    prompts, metadata = [], []
    for start in range(0, len(source), 4096):
        rows = source.__getitems__(list(range(start, min(start + 4096, len(source)))))
        for i, row in enumerate(rows, start=start):
            row = dict(row)
            prompt = _plain(row.pop("prompt"))
            if not isinstance(prompt, str):
                raise ValueError(f"{spec!r}: record {i}: prompt is not UTF-8 text: {prompt!r}")
            prompts.append(prompt)
            metadata.append(_plain(row))
    if not prompts:
        raise ValueError(f"{spec!r}: no prompts (split {split!r} is empty)")
    return PromptSet(prompts, metadata, source=spec)


# --------------------------------------------------------------------------- sampling


class GroupSampler:
    """Which prompts each epoch samples, each repeated K times as one group.

    The stream of prompt indices is pass 0's permutation of range(N), then pass 1's,
    ...; pass p's permutation is `np.random.default_rng([seed, p]).permutation(N)`
    (range(N) itself when shuffle=False). Epoch e takes stream positions
    [e*P, (e+1)*P), so every prompt is sampled once per pass and epoch e depends only
    on (seed, N, P, e): resuming needs nothing but the epoch index.

    An epoch may hold a prompt twice: when P > N, and whenever its window straddles a
    pass boundary (N not a multiple of P). Such repeats are separate groups with
    their own group id; advantages are normalised per group id, never per prompt text.

    Args:
      num_prompts: N, the size of the prompt set (>= 1).
      prompts_per_epoch: P, groups per epoch over all hosts (>= 1).
      group_size: K, samples per prompt (>= 1).
      seed: non-negative integer; the data-order seed.
      shuffle: reshuffle every pass (else the stream is 0, 1, ..., N-1, 0, 1, ...).
    """

    def __init__(
        self,
        num_prompts: int,
        prompts_per_epoch: int,
        group_size: int,
        seed: int,
        shuffle: bool = True,
    ):
        for name, value in [
            ("num_prompts", num_prompts),
            ("prompts_per_epoch", prompts_per_epoch),
            ("group_size", group_size),
        ]:
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_prompts = int(num_prompts)
        self.prompts_per_epoch = int(prompts_per_epoch)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._perms: dict[int, np.ndarray] = {}  # the last passes' permutations

    def _permutation(self, p: int) -> np.ndarray:
        if p not in self._perms:
            if len(self._perms) >= 2:  # an epoch window spans at most a few passes
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng([self.seed, p])
            self._perms[p] = rng.permutation(self.num_prompts).astype(np.int64)
        return self._perms[p]

    def epoch(self, epoch_index: int) -> np.ndarray:
        """int64[P]: the prompt indices of epoch `epoch_index`, one per group."""
        if int(epoch_index) != epoch_index or epoch_index < 0:
            raise ValueError(f"epoch_index must be an integer >= 0, got {epoch_index!r}")
        n, p = self.num_prompts, self.prompts_per_epoch
        pos = np.arange(int(epoch_index) * p, (int(epoch_index) + 1) * p, dtype=np.int64)
        if not self.shuffle:
            return pos % n
        out = np.empty(p, np.int64)
        passes = pos // n
        for q in range(int(passes[0]), int(passes[-1]) + 1):
            mask = passes == q
            out[mask] = self._permutation(q)[pos[mask] % n]
        return out

    def samples(self, epoch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt_idx, group_ids), both int64[P*K]: each prompt K times in a row.

        group_ids[i] = i // K numbers the epoch's groups 0..P-1.
        """
        k = self.group_size
        groups = np.arange(self.prompts_per_epoch, dtype=np.int64)
        return np.repeat(self.epoch(epoch_index), k), np.repeat(groups, k)

    def host_slice(self, array: Any, process_index: int, process_count: int) -> Any:
        """This host's contiguous share of whole groups of `array`.

        `array` is indexed by group (leading axis P, e.g. `epoch()`) or by sample
        (leading axis P*K, e.g. `samples()` outputs, rewards); host i gets groups
        [i*P/H, (i+1)*P/H) with H = process_count.
        """
        p, k = self.prompts_per_epoch, self.group_size
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index {process_index} is not in [0, process_count={process_count})"
            )
        if p % process_count:
            raise ValueError(
                f"prompts_per_epoch={p} is not divisible by process_count={process_count}: "
                "each host must get whole groups"
            )
        n = len(array)
        if n not in (p, p * k):
            raise ValueError(
                f"array has leading size {n}; expected prompts_per_epoch={p} (one per "
                f"group) or prompts_per_epoch*group_size={p * k} (one per sample)"
            )
        share = n // process_count
        return array[process_index * share : (process_index + 1) * share]
