"""The ``packer`` command line.

Subcommands that live in adapter packages (``serving``, ``sims``, ``k8s``) are imported lazily by
dotted name, so the core never imports an adapter and ``packer plan`` starts without loading
Triton or Kubernetes clients.
"""

from __future__ import annotations

import importlib
import sys

import click

from packer.errors import UserError


class LazyGroup(click.Group):
    """A click group whose subcommands are ``"module:attr"`` strings, imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            mod, _, attr = self.lazy[name].partition(":")
            return getattr(importlib.import_module(mod), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy={
    "plan": "packer.cli_plan:plan",
    "gpus": "packer.cli_plan:gpus",
    "scale": "packer.cli_scale:scale",
    "serve-local": "serving.cli:serve_local",
    "simulate": "sims.cli:simulate",
    "capacity": "sims.cli:capacity",
    "reconcile": "k8s.cli:reconcile",
})
@click.version_option(package_name="packer")
def cli() -> None:
    """Pack many models onto few GPUs by their traffic and latency targets."""


@cli.group(cls=LazyGroup, lazy={"triton": "serving.cli:render_triton", "k8s": "k8s.cli:render_k8s"})
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one clear message and exit 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="packer", standalone_mode=False)
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
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
