"""Options as dataclass fields: one place holds each option's name, type, default and help.

Every command's options are a dataclass whose fields are made with `option(...)`. `add_options` turns
the fields into argparse flags (`--<field name>`, typed, with the default in the help), `from_args`
builds the dataclass back from the parsed flags, and `read_toml` checks a `--config` file's keys and
values against the same fields. So the command line, a TOML recipe and the Python API cannot drift.

Also here: the choices several commands share (attention backends, compile modes, precisions, devices,
the fp8 recipes and layers) and the checks on them that need no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path

from bert_pretrain.errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# attention.BACKENDS written out, so that building the command line imports no torch (tests/options/test_train_options.py
# checks that they agree), and torch.compile's modes.
ATTENTION_BACKENDS = ("auto", "sdpa", "math", "flash", "varlen", "flex", "flash_attn")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # what `step.autocast` runs (fp8: bf16, with fp8.py's float8 layers)
# torchao.float8's recipes (Float8LinearRecipeName values) and the encoder layer's four linear layers
# (fp8.LAYER_PATHS maps them to modules; tests/test_fp8.py checks that they agree).
FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
FP8_LAYERS = ("qkv", "attn_out", "mlp1", "mlp2")
# The two layers torchao's tensorwise heuristic converts at BERT-large's shapes (K 1024 -> N 3072 and 4096);
# the other two have N = 1024, where its H100 measurements show no gain.
DEFAULT_FP8_LAYERS = "qkv,mlp1"
# With --fused_norm these layers' weights go to the fused kernels through F.linear, past any module swap.
FUSED_NORM_LAYERS = ("attn_out", "mlp2")
# --device takes any name torch.device knows, checked when the run starts (the parser imports no torch).
DEVICE_HELP = ("where to run: auto (this process's accelerator device when there is one, else the CPU), cpu, or "
               "an accelerator's name as PyTorch knows it (cuda, xpu, mps; a vendor plug-in's, e.g. npu or hpu)")


def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, aliases: tuple = (),
           group: str | None = None, exclusive: str | None = None, positional: bool = False,
           default_factory=dataclasses.MISSING, **argparse_kwargs):
    """A dataclass field that is also a command-line option.

    default / default_factory: as for `dataclasses.field` (neither: a required option).
    help: its `--help` line; "(default: X)" is added unless the text already says what the default is.
    flag: the option's spelling when it is not `--<field name>` (the field name stays the Python name).
    aliases: more spellings of the same option, each `(flag, argparse keyword arguments)`, e.g. the
      reference's `("--no_compile", {"action": "store_false"})` or `("--do_lower_case", {"type": truth})`.
    group: the `--help` section it is listed under; exclusive: a name shared by options of which at
      most one may be given (argparse's mutually exclusive group; `required=True` on its options: one must be).
    positional: a positional argument instead of `--name`.
    argparse_kwargs: anything else argparse takes (choices, nargs, metavar, type).
    """
    metadata = {"help": help, "argparse": argparse_kwargs, "flag": flag, "aliases": aliases, "group": group,
                "exclusive": exclusive, "positional": positional}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def is_option(f: dataclasses.Field) -> bool:
    return "argparse" in f.metadata


def base_type(cls, name: str):
    """int / float / str / bool / list of a field: the first member of `X | Y | None` that is not None."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return list if typing.get_origin(hint) is list else hint


def whole_number(text: str) -> int:
    """An int; integral floats such as the reference scripts' `--max_steps=7100.0` are accepted."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def truth(text: str) -> bool:
    """An absl-style boolean flag value (the reference scripts' --do_lower_case=True)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return value in ("true", "1", "yes")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(f: dataclasses.Field) -> str:
    text, default = f.metadata["help"], _default(f)
    if default is None or "(default" in text:  # None: the help says what happens without it
        return text
    return f"{text} (default: {default})"


def add_options(parser: argparse.ArgumentParser, cls, suppress_defaults: bool = False,
                container=None) -> None:
    """Add a flag for every option field of `cls` to `parser` (into `container`, an argument group, if
    given). With `suppress_defaults` the parsed namespace holds only the flags actually given (so they
    can override a TOML file); otherwise each absent flag has the field's default."""
    sections, exclusive = {}, {}
    for f in _help_order(cls):
        target = container or parser
        if f.metadata["group"]:
            if f.metadata["group"] not in sections:
                sections[f.metadata["group"]] = parser.add_argument_group(f.metadata["group"])
            target = sections[f.metadata["group"]]
        if f.metadata["exclusive"]:
            key = f.metadata["exclusive"]
            if key not in exclusive:
                required = any(g.metadata.get("exclusive") == key and g.metadata["argparse"].get("required")
                               for g in dataclasses.fields(cls))  # one of them must be given
                exclusive[key] = target.add_mutually_exclusive_group(required=required)
            target = exclusive[key]
        _add_one(target, cls, f, suppress_defaults)


def _help_order(cls) -> list[dataclasses.Field]:
    """The option fields section by section, the sections in the order the class's own fields name them (so a
    shared group inherited from a base, such as InstanceOptions, does not move to the top of `--help`), and
    within a section the inherited fields first (a base declares the reference's leading flags)."""
    own = list(cls.__dict__.get("__annotations__", {}))  # in the order the class declares them
    options = [f for f in dataclasses.fields(cls) if is_option(f)]
    by_name = {f.name: f for f in options}
    sections = list(dict.fromkeys([by_name[n].metadata["group"] for n in own if n in by_name]
                                  + [f.metadata["group"] for f in options]))
    return sorted(options, key=lambda f: (sections.index(f.metadata["group"]), f.name in own))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _add_one(target, cls, f: dataclasses.Field, suppress_defaults: bool) -> None:
    kind, extra = base_type(cls, f.name), dict(f.metadata["argparse"])
    default = argparse.SUPPRESS if suppress_defaults else _default(f)
    if f.metadata["exclusive"]:
        extra.pop("required", None)  # the group is required, not its members
    if f.metadata["positional"]:
        target.add_argument(f.name, help=_help(f), **extra)
        return
    flag = f.metadata["flag"] or f"--{f.name}"
    if kind is bool:
        target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                            help=_help(f))
    else:
        if kind is list:
            extra.setdefault("nargs", "+")
        elif "type" not in extra:
            extra["type"] = whole_number if kind is int else kind
        extra.setdefault("required", _required(f) and not f.metadata["exclusive"])
        target.add_argument(flag, dest=f.name, default=default, help=_help(f), **extra)
    for alias, kwargs in f.metadata["aliases"]:
        target.add_argument(alias, dest=f.name, default=argparse.SUPPRESS, **{"help": argparse.SUPPRESS, **kwargs})


def from_args(cls, args: argparse.Namespace, **overrides):
    """The options dataclass from parsed flags (fields the namespace lacks keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if is_option(f) and hasattr(args, f.name)}
    return cls(**{**values, **overrides})


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def read_toml(path: str, fields: dict[str, tuple[type, dataclasses.Field]], also_known=()) -> dict:
    """A TOML file's `key = value` lines, each key a field of `fields` (name -> (dataclass, field)) or in
    `also_known`, each value checked against its field's type and choices. Errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such config file; pass --config with a TOML file (see configs/*.toml)")
    try:
        values = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{file}: not valid TOML ({err})") from None
    known = set(fields) | set(also_known)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; keys are the flag names of the command's --help"
            raise InputError(f"{file}: unknown option '{key}'{hint}")
    return {k: (_coerce(*fields[k], v, str(file)) if k in fields else v) for k, v in values.items()}


def _coerce(cls, f: dataclasses.Field, value, source: str):
    kind, argparse_kwargs = base_type(cls, f.name), f.metadata["argparse"]
    if value is True and argparse_kwargs.get("nargs") == "?" and "const" in argparse_kwargs:
        return argparse_kwargs["const"]  # `key = true` as the bare flag
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is int and isinstance(value, float) and value.is_integer())
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
        or (kind is list and isinstance(value, list))
    )
    if not ok:
        raise InputError(f"{source}: option '{f.name}' must be {_TYPE_WORDS[kind]}, got {value!r}")
    choices = argparse_kwargs.get("choices")
    if choices and value not in choices:
        raise InputError(f"{source}: option '{f.name}' must be one of {list(choices)}, got {value!r}")
    return value if kind is list else kind(value)


class Refuse(argparse.Action):
    """A flag of the reference's scripts that means something else here: an error that says what to use
    (`aliases=(("--output_file", {"action": Refuse, "message": "..."}),)`)."""

    def __init__(self, option_strings, dest, message: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.message}")


def device_option():
    """The --device option of the commands that run a model."""
    return option("auto", DEVICE_HELP, metavar="DEVICE")


def compile_choices(compile: bool | None, compile_optimizer: bool | None, on_gpu: bool) -> tuple[bool, bool]:
    """(compile the model, compile LAMB's update): the model by default on CUDA only (on a CPU compilation
    costs more than it saves), LAMB by default as the model."""
    model = on_gpu if compile is None else compile
    return model, model if compile_optimizer is None else compile_optimizer


def require_trainable_attention(backend: str, on_gpu: bool) -> None:
    """Raise the user-facing error for an attention backend that cannot train here (train and bench)."""
    if backend == "flex" and not on_gpu:
        raise InputError("--attention flex trains only on CUDA (FlexAttention has no backward on the CPU); "
                         "use --attention auto")


def fp8_layer_names(text: str, fused_norm: bool) -> tuple[str, ...]:
    """`--fp8_layers` ('all' or names from FP8_LAYERS, comma-separated) as names in FP8_LAYERS order."""
    names = FP8_LAYERS if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FP8_LAYERS]
    if unknown or not names:
        raise InputError(f"--fp8_layers {text!r}: name the encoder layer's linear layers to run in float8, "
                         f"comma-separated, from {', '.join(FP8_LAYERS)} (or 'all'); e.g. {DEFAULT_FP8_LAYERS}")
    clash = [n for n in names if fused_norm and n in FUSED_NORM_LAYERS]
    if clash:
        kept = ",".join(n for n in names if n not in FUSED_NORM_LAYERS) or DEFAULT_FP8_LAYERS
        raise InputError(f"--fp8_layers {','.join(clash)} cannot run with --fused_norm (its kernels take those "
                         f"layers' weights directly, past the float8 layers); pass --fp8_layers {kept}, or drop "
                         "--fused_norm")
    return tuple(n for n in FP8_LAYERS if n in names)
