"""``adaptrain completion bash|zsh``: a shell completion script, made from the parser
itself so it always knows every subcommand and option.

    eval "$(adaptrain completion bash)"        # in ~/.bashrc
    eval "$(adaptrain completion zsh)"         # in ~/.zshrc (through bashcompinit)
"""

from __future__ import annotations

import argparse
import shlex


def _walk(
    parser: argparse.ArgumentParser, path: str, out: dict[str, tuple[list[str], list[str]]]
) -> None:
    subcommands: list[str] = []
    options: list[str] = []
    for action in parser._actions:
        options.extend(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                subcommands.append(name)
                _walk(child, f"{path} {name}".strip(), out)
    out[path] = (subcommands, options)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table: dict[str, tuple[list[str], list[str]]] = {}
    _walk(parser, "", table)
    subs = "\n".join(
        f"  [{shlex.quote(path)}]={shlex.quote(' '.join(s))}"
        for path, (s, _) in sorted(table.items())
    )
    opts = "\n".join(
        f"  [{shlex.quote(path)}]={shlex.quote(' '.join(o))}"
        for path, (_, o) in sorted(table.items())
    )
    body = f"""# adaptrain {shell} completion (adaptrain completion {shell})
declare -gA _adaptrain_sub=(
{subs}
)
declare -gA _adaptrain_opts=(
{opts}
)
_adaptrain() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" w next
  for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
    case "$w" in -*) continue ;; esac
    next="${{path:+$path }}$w"
    if [[ -n "${{_adaptrain_sub[$next]+x}}" ]]; then path="$next"; fi
  done
  if [[ "$cur" == -* ]]; then
    COMPREPLY=( $(compgen -W "${{_adaptrain_opts[$path]}}" -- "$cur") )
  else
    COMPREPLY=( $(compgen -W "${{_adaptrain_sub[$path]}}" -- "$cur") )
  fi
}}
complete -F _adaptrain adaptrain
"""
    if shell == "zsh":
        body = "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "completion",
        help='print a shell completion script (eval "$(adaptrain completion bash)")',
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=None, completion=True)
