"""Command-line flags from a config dataclass: one --flag-name per field, the comment after the field as its help
(one place documents a field, for readers and for --help alike), and one-line errors for a wrong flag or value."""
import argparse
import inspect
import re
import sys
from dataclasses import fields


def field_help(config_cls) -> dict:
    """{field: the comment after it} from the dataclass's source: one place documents a field, for readers and for
    --help alike."""
    out = {}
    for line in inspect.getsource(config_cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag or value is one line ("error: argument --lr: invalid float value: 'abc'"), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def _parser(config_cls, only_given: bool = False) -> argparse.ArgumentParser:
    """One --flag per field; only_given: flags not on the command line are left out of the result."""
    doc = sys.modules[config_cls.__module__].__doc__ or ""
    p = OneLineParser(prog="train.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(config_cls)
    for f in fields(config_cls):
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name, "")
        default = argparse.SUPPRESS if only_given else f.default
        if f.type is bool:
            p.add_argument(flag, action="store_true", help=text, **({"default": default} if only_given else {}))
        else:
            p.add_argument(flag, type=f.type, default=default, help=f"{text} (default: {f.default!r})",
                           choices=CHOICES.get(f.name))
    return p


CHOICES = {"schedule": ("auto", "linear", "cosine", "constant")}  # fields whose values are a fixed set (others: checked later)


def parse_args(config_cls, argv):
    """A config_cls from argv: one --flag-name per field, its comment as the help, its default shown."""
    return config_cls(**vars(_parser(config_cls).parse_args(argv)))


def given_flags(config_cls, argv) -> set:
    """The fields argv sets explicitly (a --resume takes the saved run's value for the others)."""
    return set(vars(_parser(config_cls, only_given=True).parse_known_args(argv)[0]))
