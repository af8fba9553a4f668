"""`si principles validate` and `si principles show`: check and inspect principle-set files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from si_toolkit.cli.common import FilesArg, JsonOpt, failures, out, terminal_text

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Validate and inspect principle-set files.")


@app.command("validate")
def principles_validate(files: FilesArg) -> None:
    """Check principle-set files; prints one line per file and exits 2 on the first bad one."""
    from si_toolkit.principles import load_principle_set

    with failures():
        for path in files:
            s = load_principle_set(path)
            out.print(terminal_text(f"ok  {path}  ({s.name}: mode {s.mode}, K = {s.K})"), highlight=False)


@app.command("show")
def principles_show(
    file: Annotated[Path, typer.Argument(help="A principle-set YAML file.")],
    json_out: JsonOpt = False,
) -> None:
    """Print the exact system prompt of each variant: its text, then the chain-of-thought instruction."""
    from si_toolkit.chat import PREFILL, render_system
    from si_toolkit.principles import load_principle_set

    with failures():
        s = load_principle_set(file)
    variants = [{"variant": i, "label": v.label, "system_prompt": render_system(v.text)}
                for i, v in enumerate(s.variants)]
    if json_out:
        record = {"name": s.name, "mode": s.mode, "design": s.design, "K": s.K, "prefill": PREFILL,
                  "variants": variants}
        sys.stdout.write(json.dumps(record, indent=2) + "\n")  # ASCII: no raw control characters
        return
    head = f"[bold]{terminal_text(s.name)}[/] — mode {s.mode}" + (f", design {s.design}" if s.design else "")
    out.print(head + f", K = {s.K}", highlight=False)
    if s.description:
        out.print(terminal_text(s.description), highlight=False)
    out.print(f"The system prompt of each variant, exactly as sampled and scored. The user turn is the prompt; "
              f"the assistant turn starts with {terminal_text(repr(PREFILL))} unless --no-prefill is given. A chat "
              "template without a system role gets this text at the start of the user turn. Invisible "
              "characters are shown as escapes (\\x1b).", highlight=False)
    for v in variants:
        out.rule(f"variant {v['variant']}: {terminal_text(str(v['label']))}", align="left", style="dim")
        out.print(terminal_text(str(v["system_prompt"])), highlight=False)
    out.rule(style="dim")
