"""The training shards checked as a set before the first step.

Each shard's metadata (layout, widths, dtypes, row counts: `shards.shard_layout`, no data read) is compared
with the other shards' and with the run's flags, so a shard of another width is named at setup rather than
when the loader reaches it, possibly hours into a run, with advice that contradicts the other shards. And the
training set is compared with the eval set: a run scored on shards it trains on measures nothing.
"""

from __future__ import annotations

import filecmp
import os
from collections import Counter
from pathlib import Path

from bert_pretrain.data.shards import ShardLayout, list_shards, shard_layout
from bert_pretrain.errors import InputError


def _listed(paths: list[Path], shown: int = 3) -> str:
    return ", ".join(p.name for p in paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _read_layouts(files: list[Path], skip_bad_shards: bool) -> tuple[dict[Path, ShardLayout], list[str]]:
    """Each readable shard's layout, and a note per unreadable one (an error instead without `skip_bad_shards`)."""
    layouts, skipped = {}, []
    for path in files:
        try:
            layouts[path] = shard_layout(path)
        except InputError as err:
            problem = str(err)
        except (OSError, KeyError, ValueError) as err:  # h5py's errors for metadata damaged past the superblock
            problem = f"{path}: unreadable shard ({type(err).__name__}: {err})"
        else:
            continue
        if not skip_bad_shards:
            raise InputError(f"{problem} (training shard; pass --skip_bad_shards to skip unreadable shards)")
        skipped.append(f"note: the training shard {path} will be skipped, it cannot be read: {problem}")
    return layouts, skipped


def check_training_shards(directory: str | Path, max_seq_length: int, max_predictions_per_seq: int,
                          skip_bad_shards: bool = False) -> list[str]:
    """Refuse, in one line, a training folder whose padded shards differ in width (naming the odd shard and
    the majority), whose shards' widths are not the flags', or that holds no row; return notes for the
    unreadable shards `skip_bad_shards` lets through. Variable-length shards have no width to compare (the
    loader pads their rows to the flags and names a row too long for them)."""
    directory = Path(directory)
    files = list_shards(directory)
    layouts, notes = _read_layouts(files, skip_bad_shards)
    if not layouts:
        raise InputError(f"{directory}: none of its {len(files)} shards can be read; prepare them again")
    if sum(layout.rows for layout in layouts.values()) == 0:
        raise InputError(f"{directory}: its {len(layouts)} shards hold no rows; prepare them again")
    flags = (max_seq_length, max_predictions_per_seq)
    by_width: dict[tuple[int, int], list[Path]] = {}
    for path, layout in layouts.items():
        if layout.format == "padded":
            by_width.setdefault((layout.max_seq_length, layout.max_predictions_per_seq), []).append(path)
    if not by_width:
        return notes
    counts = Counter({width: len(paths) for width, paths in by_width.items()})
    majority = max(counts, key=lambda width: (counts[width], width == flags))  # a tie goes to the flags' width
    majority_widths = layouts[by_width[majority][0]].widths()
    told = (f" (and this run's flags, --max_seq_length {flags[0]} --max_predictions_per_seq {flags[1]}, match "
            "neither)" if majority != flags and flags not in by_width else "")
    if len(by_width) > 1:
        odd = sorted(path for width, paths in by_width.items() if width != majority for path in paths)
        others = f" ({len(odd)} shards differ: {_listed(odd)})" if len(odd) > 1 else ""
        raise InputError(f"{odd[0]}: {layouts[odd[0]].widths()}, but {counts[majority]} of the {sum(counts.values())} "
                         f"shards of {directory} have {majority_widths}{others}{told}; a run reads shards of one "
                         "width: move the odd shards out of the folder, or prepare them again with the others' "
                         "settings")
    if majority != flags:
        raise InputError(f"{directory}: its {counts[majority]} shards have {majority_widths}, but this run has "
                         f"--max_seq_length {flags[0]} --max_predictions_per_seq {flags[1]}; pass --max_seq_length "
                         f"{majority[0]} --max_predictions_per_seq {majority[1]}")
    return notes


def shared_shards(input_dir: str | Path, eval_dir: str | Path) -> list[tuple[Path, Path]]:
    """(training shard, eval shard) pairs that are one file (the same folder, a link) or the same bytes (a copy).
    Only shards of equal size are compared byte for byte, so a real training set costs a stat per file."""
    training = list_shards(input_dir)
    sizes = {path: path.stat().st_size for path in training}
    shared = []
    for eval_shard in list_shards(eval_dir):
        eval_size = eval_shard.stat().st_size
        for path in training:
            if sizes[path] == eval_size and (os.path.samefile(path, eval_shard)
                                             or filecmp.cmp(path, eval_shard, shallow=False)):
                shared.append((path, eval_shard))
    return shared


def refuse_training_on_the_eval_set(input_dir: str | Path, eval_dir: str | Path) -> None:
    """One line naming the shards --input_dir and --eval_dir share, and the two ways on."""
    shared = shared_shards(input_dir, eval_dir)
    if not shared:
        return
    pairs = ", ".join(f"{train}" + (f" = {held}" if train != held else "")
                      for train, held in shared[:3])
    more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
    raise InputError(f"--input_dir {input_dir} and --eval_dir {eval_dir} share {len(shared)} shard(s) ({pairs}{more}): "
                     "the run would be scored on data it trains on; pass the held-out eval set as --eval_dir (prepare "
                     "writes it apart from the training shards), or --allow_eval_overlap if this is meant")
