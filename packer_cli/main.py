"""The ``packer`` command line.

Subcommands are loaded on first use, each by a small function that imports its module: the
adapters' commands need their optional extras (Triton's client, Kubernetes', numpy), and
``packer plan`` starts without loading any of them. The imports are plain statements inside those
functions, so the layer contracts (import-linter) see every edge.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from packer.cliutil import flush_notes
from packer.errors import UserError
from packer.safeload import cut_path


class LazyGroup(click.Group):
    """A click group whose subcommands are loaded by a function on first use."""

    def __init__(self, *args, lazy: dict[str, Callable[[], click.Command]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return self.lazy[name]()
        return super().get_command(ctx, name)


def _plan() -> click.Command:
    from packer_cli.plan import plan
    return plan


def _check() -> click.Command:
    from packer_cli.check import check
    return check


def _gpus() -> click.Command:
    from packer_cli.plan import gpus
    return gpus


def _scale() -> click.Command:
    from packer_cli.scale import scale
    return scale


def _serve_local() -> click.Command:
    from serving.cli import serve_local  # the serving extra
    return serve_local


def _render_triton() -> click.Command:
    from serving.cli import render_triton  # the serving extra
    return render_triton


def _simulate() -> click.Command:
    from sims.cli import simulate  # the sims extra
    return simulate


def _capacity() -> click.Command:
    from sims.cli import capacity  # the sims extra
    return capacity


def _reconcile() -> click.Command:
    from k8s.cli import reconcile  # the k8s extra
    return reconcile


def _render_k8s() -> click.Command:
    from k8s.cli import render_k8s  # the k8s extra
    return render_k8s


@click.group(cls=LazyGroup, lazy={"plan": _plan, "check": _check, "gpus": _gpus, "scale": _scale, "serve-local": _serve_local,
                                  "simulate": _simulate, "capacity": _capacity, "reconcile": _reconcile})
@click.version_option(package_name="packer")
def cli() -> None:
    """Pack many models onto few GPUs by their traffic and latency targets."""


@cli.group(cls=LazyGroup, lazy={"triton": _render_triton, "k8s": _render_k8s})
def render() -> None:
    """Turn a plan into what runs it: Triton model repositories or Kubernetes objects."""


def one_line(msg: str, limit: int = 1000) -> str:
    """An error as one line of bounded length: the start (the field) and the end (the fix) kept.

    Control characters and lone surrogates a hostile file may carry into a name are escaped, so the
    line neither drives the terminal nor fails to print.
    """
    msg = " ".join(msg.split())
    if len(msg) > limit:
        msg = msg[: limit - 300] + " … " + msg[-297:]
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else ascii(c)[1:-1] for c in msg)


def _no_empty_values(args: list[str]) -> None:
    """Refuse an option given an empty value (``--duration "$D"`` with ``D`` unset): each command
    read it as the option left out, and ran on its default, or wrote nowhere, with exit 0."""
    for prev, arg in zip(args, args[1:]):
        if arg.strip() == "" and prev.startswith("-") and "=" not in prev and prev != "--":
            raise UserError(f"{prev} '': an empty value. Fix: give {prev} a value, or leave it out")
        if prev == "--":
            return
    for arg in args:
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            raise UserError(f"{arg}: an empty value. Fix: give {arg[:-1]} a value, or leave it out")


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one clear message and exit 2, never a traceback."""
    ok = False
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        _no_empty_values(args)
        cli.main(args=args, prog_name="packer", standalone_mode=False)
        ok = True
    except UserError as e:
        click.echo(f"error: {one_line(str(e))}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as e:  # a bad option or argument: one line too, and where help is
        where = e.ctx.command_path if e.ctx else "packer"
        click.echo(f"error: {one_line(e.format_message())} (see `{where} --help`)", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        return 2
    except click.exceptions.Exit as e:
        ok = e.exit_code == 0
        return e.exit_code
    except BrokenPipeError:  # `packer plan | head`: the reader left, nothing to say
        return 141
    except OSError as e:
        # The machine, not the code: a path it cannot write (``-d /proc/x``), a disk full, a
        # directory removed under a run. Each command checks what it can first; this is the rest.
        where = f"{cut_path(str(e.filename))}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or one_line(str(e))}. Fix: check the path, its permissions "
                   "and the free space", err=True)
        return 2
    finally:
        flush_notes(ok)  # deprecation notes after a successful run only: an error stays one line
    return 0


if __name__ == "__main__":
    sys.exit(main())
