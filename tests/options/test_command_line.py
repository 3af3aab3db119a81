"""The command line is the interface (the NVIDIA recipe's flag names, defaults and TOML keys): every option that
`bert-pretrain <command> --help` listed before the code moved into prepare/, data/ and options/ is still there,
spelt, typed, grouped and explained the same. New options may be added; none may change or go.

command_line_before_the_layout.json was written from the parsers of commit 4b094b9 (the last commit before
the move) by dumping every argparse action of every subcommand."""

import json
from pathlib import Path

from bert_pretrain.cli import build_parser

BEFORE = Path(__file__).with_name("command_line_before_the_layout.json")
# prepare-mlperf's instance flags are now declared once with prepare's (options/prepare.py InstanceOptions), so
# they carry prepare's help lines and section title; the flags, types and defaults are unchanged.
SHARED_WITH_PREPARE = {("prepare-mlperf", d) for d in ("max_seq_length", "max_predictions_per_seq", "masked_lm_prob",
                                                       "short_seq_prob", "dupe_factor", "random_seed")}
# Widened for any PyTorch accelerator (devices.py): a fixed list of choices became any name torch knows, checked
# when the run starts; every value accepted before is still accepted (test_widened_options_accept_every_old_choice).
WIDENED = {("bench", "device"), ("evaluate", "device"), ("train", "device"), ("train", "dist_backend")}
# prepare reads record files (JSON Lines, Parquet, Arrow): --input_format gained three choices after the old ones,
# and the two helps name the new formats; what the old values mean is unchanged.
RECORD_INPUTS = {("prepare", "input_files"): {"help"}, ("prepare", "input_format"): {"help", "choices"}}


def describe(action, groups) -> dict:
    return {"flags": action.option_strings, "dest": action.dest, "default": repr(action.default), "help": action.help,
            "choices": list(action.choices) if action.choices else None, "nargs": repr(action.nargs),
            "metavar": repr(action.metavar), "group": groups.get(id(action)),
            "type": getattr(action.type, "__name__", repr(action.type))}


def current() -> dict[str, list[dict]]:
    parser = build_parser()
    out = {}
    for name, sub in parser.subcommands.items():
        groups = {id(a): g.title for g in sub._action_groups for a in g._group_actions}
        out[name] = [describe(a, groups) for a in sub._actions]
    return out


def test_every_option_of_every_command_is_unchanged():
    before, now = json.loads(BEFORE.read_text()), current()
    assert sorted(before) == sorted(now)
    changed = []
    for command, actions in before.items():
        by_flags = {tuple(a["flags"]) or a["dest"]: a for a in now[command]}
        for old in actions:
            new = by_flags.get(tuple(old["flags"]) or old["dest"])
            if new is None:
                changed.append(f"{command}: {old['flags'] or old['dest']} is gone")
                continue
            keys = set(old)
            if old["dest"] == "workers":  # one per CPU of the machine that wrote the snapshot
                keys.discard("default")
            if (command, old["dest"]) in SHARED_WITH_PREPARE:
                keys -= {"help", "group"}
            if (command, old["dest"]) in WIDENED:
                keys -= {"choices", "help", "metavar"}
            if (command, old["dest"]) in RECORD_INPUTS:
                keys -= RECORD_INPUTS[command, old["dest"]]
                if old["choices"] and new["choices"][:len(old["choices"])] != old["choices"]:
                    changed.append(f"{command} {old['flags']}: choices were {old['choices']}, now {new['choices']}")
            changed += [f"{command} {old['flags'] or old['dest']}: {k} was {old[k]!r}, now {new[k]!r}"
                        for k in sorted(keys) if old[k] != new[k]]
    assert not changed, "\n".join(changed)


def test_widened_options_accept_every_old_choice():
    before, now = json.loads(BEFORE.read_text()), current()
    for command, dest in sorted(WIDENED):
        (old,) = [a for a in before[command] if a["dest"] == dest]
        (new,) = [a for a in now[command] if a["dest"] == dest]
        assert old["choices"] and (new["choices"] is None or set(old["choices"]) <= set(new["choices"]))
        assert new["type"] == old["type"] and new["default"] == old["default"]
