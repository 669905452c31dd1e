"""``tempering run | plugins [--check] | recipe-schema | check-template | preview | recipes | serve``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["main"]

def _highlight(tokenizer: Any, ids: list[int], labels: list[int], color: bool) -> str:
    from tempering.tracking import render_trained

    text = render_trained(tokenizer, ids, labels)
    if color:
        text = text.replace("[[", "\x1b[42;30m").replace("]]", "\x1b[0m")
    return text


def _cmd_plugins(args: argparse.Namespace) -> int:
    from tempering.components import KINDS
    from tempering.plugin_check import check_plugins, plugin_sources
    from tempering.plugin_manager import ComponentError, build_plugin_manager, build_registry

    if args.check:
        checked = check_plugins(args.plugin)
        count = len(checked.sources)
        others = sum(1 for s in checked.sources.values() if s.package != "tempering")
        print(f"{count} plugins loaded ({others} not built in): "
              f"{len(checked.problems) or 'no'} problem{'s' * (len(checked.problems) != 1)}")
        for problem in checked.problems:
            print(f"  - {problem}")
        return 1 if checked.problems else 0
    try:  # built as a run builds it: the first problem stops it
        pm = build_plugin_manager(args.plugin)
        registry = build_registry(pm)
    except ComponentError as exc:
        raise ComponentError(f"{exc} (`tempering plugins --check` lists every problem)"
                             ) from None
    sources = plugin_sources(pm)
    for kind in KINDS:
        print(f"{kind.name}: {kind.description}")
        for name in registry.names(kind.name):
            component = registry.components[kind.name][name]
            provider = registry.providers[kind.name][name]
            print(f"  {name:<18} {provider:<36} {str(sources[provider]):<20} "
                  f"{getattr(component, 'description', '')}")
    return 0


def _cmd_recipe_schema(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tempering.hook_reference import markdown_components, markdown_hooks
    from tempering.recipe.reference import json_schema, markdown_reference

    if args.write_docs:
        folder = Path(args.write_docs)
        folder.mkdir(parents=True, exist_ok=True)
        docs = {"recipe-reference.md": markdown_reference(), "hooks.md": markdown_hooks(),
                "components.md": markdown_components(),
                "recipe.schema.json": json.dumps(json_schema(), indent=2) + "\n"}
        for name, text in docs.items():
            (folder / name).write_text(text, encoding="utf-8")
            print(f"wrote {folder / name}")
        return 0
    print(json.dumps(json_schema(), indent=2) if args.json else markdown_reference(), end="")
    return 0


def _cmd_check_template(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from tempering.chat.check import SAMPLE_CONVERSATIONS
    from tempering.chat.encoding import ConversationEncoder
    from tempering.models import loading
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import resolve_bundled

    location = resolve_bundled(args.tokenizer)
    with loading("--tokenizer", location):
        tokenizer = AutoTokenizer.from_pretrained(location)
    spec = None if args.chat_template in (None, "tokenizer") else args.chat_template
    registry = build_registry(build_plugin_manager())
    encoder = ConversationEncoder(tokenizer, chat_template=spec, masking=args.masking,
                                  registry=registry,
                                  train_on_eot=args.train_on_eot, allow_split_markers=True,
                                  append_stop_token=args.append_stop_token)
    samples = SAMPLE_CONVERSATIONS
    failures = sum(_show_sample(encoder, tokenizer, n, messages)
                   for n, messages in enumerate(samples, start=1))
    markers_ok = _markers_ok(encoder, args.allow_split_markers)
    print(f"template {encoder.template.name!r}: {len(samples) - failures}/{len(samples)} "
          "samples exact" + ("" if markers_ok else "; FAILED: markers split (see above)"))
    return 1 if failures or not markers_ok else 0


def _show_sample(encoder: Any, tokenizer: Any, n: int, messages: list[dict[str, Any]]) -> bool:
    """Print one sample's trained tokens and problems; True when it has problems."""
    from tempering.chat.check import sample_problems

    try:
        enc = encoder.encode(messages)
        problems = sample_problems(encoder, tokenizer, messages, enc)
    except Exception as exc:  # a template that cannot be rendered or located
        problems, enc = [f"{type(exc).__name__}: {exc}"], None
    print(f"--- sample {n} ({len(messages)} messages): {'FAILED' if problems else 'ok'}")
    if enc is not None:
        print(_highlight(tokenizer, enc.input_ids, enc.labels, sys.stdout.isatty()))
        print(f"    {enc.num_supervised}/{len(enc.input_ids)} tokens trained")
        if not encoder.train_on_eot:
            print("    note: train_on_eot is false: no turn trains its end-of-turn token, so the "
                  "model does not learn to stop")
        for index in enc.unterminated if encoder.train_on_eot else ():
            print(f"    note: message {index} trains no end-of-turn token (the template "
                  "writes no marker after it), so the model does not learn to stop there"
                  + ("; for a final turn set append_stop_token: eos (or the token the model "
                     "stops at)" if index == len(messages) - 1 else ""))
    for problem in problems:
        print(f"    problem: {problem}")
    return bool(problems)


def _markers_ok(encoder: Any, allowed: bool) -> bool:
    """Report markers the tokenizer splits; False when a run would refuse the template."""
    from tempering.chat.markers import split_markers_message

    split = encoder.split_markers
    if not split:
        return True
    if allowed or encoder.template.name == "tokenizer":
        listed = ", ".join(str(m) for m in split)
        print(f"note: template {encoder.template.name!r} writes {listed} as text that the "
              "tokenizer splits into pieces; the model learns them as text")
        return True
    name = getattr(encoder.tokenizer, "name_or_path", "?")
    print(f"FAILED: {split_markers_message(encoder.template.name, name, split)} "
          "(check-template --allow-split-markers)")
    return False


def _cmd_preview(args: argparse.Namespace) -> int:
    from tempering.data.datamodule import recipe_encoder
    from tempering.data.sources import BadRecordLog, load_conversations
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import check_locations, load_recipe

    if not _verbose(args):
        from tempering.console import quiet_libraries

        quiet_libraries()
    recipe = load_recipe(args.recipe, args.overrides)
    check_locations(recipe)
    pm = build_plugin_manager(recipe.plugins)
    registry = build_registry(pm)
    tokenizer = pm.hook.load_tokenizer(config=recipe.model)
    encoder = recipe_encoder(recipe, tokenizer, registry)
    sources = recipe.data.train
    for s in sources:  # read no more than needed
        s.max_records = min(s.max_records or args.n, args.n)
    log = BadRecordLog()
    conversations = load_conversations(sources, pm.hook.format_example, registry,
                                       on_bad_record="skip",
                                       seed=recipe.train.seed, log=log)[: args.n]
    if recipe.data.mixture.tasks and len(conversations) < args.n:  # then the mixture's
        from tempering.data.mixture import build_mixture

        mixture = build_mixture(recipe.data.mixture, registry, seed=recipe.train.seed,
                                on_bad_record="skip", log=log)
        conversations += mixture.train[: args.n - len(conversations)]
    color = sys.stdout.isatty()
    from tempering.data.tokenization import encode_rows

    d = recipe.data
    overflow = registry.get("overflow_policy", d.overflow.name)
    tokens = supervised = examples = 0
    for conv in conversations:
        rows = encode_rows(encoder, conv.messages, d.max_length, overflow, d.overflow.options)
        for k, row in enumerate(rows):
            if row["error_kind"]:
                print(f"--- {conv.origin}: set aside ({row['error_kind']}): {row['error']}")
                continue
            lost = rows[0]["turns_dropped"]
            fitted = (f" ({d.overflow.name}: example {k + 1} of {len(rows)}, over "
                      f"max_length {d.max_length}"
                      + (f"; {lost} trained turns left out" if lost else "") + ")"
                      if rows[0]["overflow_rows"] else "")
            examples += 1
            tokens, supervised = tokens + row["length"], supervised + row["num_supervised"]
            print(f"--- {conv.origin}: {row['num_supervised']}/{row['length']} tokens "
                  f"trained{fitted}")
            print(_highlight(tokenizer, row["input_ids"], row["labels"], color))
    print(f"supervised-token ratio over {examples} examples: "
          f"{supervised / max(1, tokens):.3f}")
    if log.total:
        print(f"skipped records: {dict(log.counts)}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from tempering.recipe import bundled_recipes

    recipes = sorted(bundled_recipes().items())
    width = max((len(name) for name, _ in recipes), default=0)
    for name, path in recipes:
        print(f"{name:<{width}}  {path}")
    return 0


def _verbose(args: argparse.Namespace) -> bool:
    return bool(args.verbose or os.environ.get("TEMPERING_DEBUG"))


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import uvicorn
    except ImportError:
        raise ValueError("tempering serve needs FastAPI and uvicorn: pip install "
                         "'tempering[serve]'") from None
    from tempering.generate.server import create_app, load_generator

    path = Path(args.model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a saved model directory (no config.json)")
    name = args.name or path.resolve().name
    generator, count = load_generator(path)
    print(f"tempering: serving {name!r} at http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(create_app(generator, name, count_tokens=count), host=args.host, port=args.port,
                log_level="warning")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tempering.console import quiet_libraries, run_table
    from tempering.pipeline import run_pipeline
    from tempering.recipe import load_recipe

    if not _verbose(args):
        quiet_libraries()
    recipe = load_recipe(args.recipe, args.overrides)
    summary = run_pipeline(recipe)
    if all(os.environ.get(k, "0") in ("0", "") for k in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        print("\n" + run_table(summary))
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Every rank waits until rank 0 has finished its work after training (evaluation, the
    final model), then the process group is taken down in order, not at interpreter exit.
    In two of three full test runs in a fresh environment, rank 1 of the two-node test aborted
    at exit ("terminate called without an active exception") after a complete run, which
    failed the launch; a rank tearing the group down while rank 0 still uses it is the
    suspected cause, not a proven one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _bool(text: str) -> bool:
    value = {"true": True, "false": False, "1": True, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from tempering import __version__

    parser = argparse.ArgumentParser(
        prog="tempering", description="Post-training for language models on PyTorch Lightning: "
        "SFT with exact chat-template masks, recipes, plugins, W&B tracking.")
    parser.add_argument("--version", action="version", version=f"tempering {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show tracebacks and library messages")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="train as a recipe says", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A run directory (train.output_dir) holds one run. Continue a stopped or crashed run "
               "with\n  tempering run RECIPE train.resume_from=last\n(its latest checkpoint; the "
               "W&B run continues), or start over with train.overwrite=true.\nSIGTERM or Ctrl+C "
               "saves checkpoints/last.ckpt and exits 143 or 130.")
    run.add_argument("recipe", help="recipe file or bundled recipe name")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides")
    run.set_defaults(fn=_cmd_run)
    plugins = sub.add_parser("plugins", help="list registered components, their plugins and "
                                             "packages; --check reports every conflict")
    plugins.add_argument("--plugin", action="append", default=[], help="extra plugin module")
    plugins.add_argument("--check", action="store_true",
                         help="load every installed plugin and report every problem (exit 1 "
                              "when there is one) instead of stopping at the first")
    plugins.set_defaults(fn=_cmd_plugins)
    check = sub.add_parser("check-template", help="verify a chat template's trained spans")
    check.add_argument("--tokenizer", required=True, help="tokenizer path (or bundled:tiny-llama)")
    check.add_argument("--chat-template", default=None, help="registered name or .jinja file")
    check.add_argument("--masking", default="all_assistant")
    check.add_argument("--append-stop-token", default=None,
                       help="token appended after a final turn the template leaves open (eos)")
    check.add_argument("--train-on-eot", type=_bool, default=True, metavar="{true,false}",
                       help="train each turn's end-of-turn token (recipe key train_on_eot)")
    check.add_argument("--allow-split-markers", action="store_true",
                       help="accept markers the tokenizer splits (recipe key allow_split_markers)")
    check.set_defaults(fn=_cmd_check_template)
    preview = sub.add_parser("preview", help="show a recipe's first encoded examples")
    preview.add_argument("recipe")
    preview.add_argument("overrides", nargs="*")
    preview.add_argument("-n", type=int, default=3, help="examples to show")
    preview.set_defaults(fn=_cmd_preview)
    schema = sub.add_parser("recipe-schema", help="every recipe key with its type, default and "
                                                  "documentation; --json: a JSON Schema")
    schema.add_argument("--json", action="store_true", help="print the JSON Schema (for editors)")
    schema.add_argument("--write-docs", metavar="DIR", help="write the generated reference "
                        "(recipe keys, hooks, built-in components, JSON Schema) into DIR")
    schema.set_defaults(fn=_cmd_recipe_schema)
    recipes = sub.add_parser("recipes", help="list bundled recipes")
    recipes.set_defaults(fn=_cmd_recipes)
    serve = sub.add_parser("serve", help="an OpenAI-compatible server over a saved model "
                                         "(needs the `serve` extra)")
    serve.add_argument("model_dir", help="a saved model directory (a run's final/)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", help="the model id requests use (default: the folder name)")
    serve.set_defaults(fn=_cmd_serve)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with ``key=value`` overrides accepted before or after options."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                    for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point; user errors print one line and exit 2 (``-v``: the traceback)."""
    args = _parse(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # the reader went away (`tempering plugins | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141  # 128 + SIGPIPE, as a shell reports a writer whose reader closed
    except Exception as exc:
        from tempering.errors import user_errors
        from tempering.train.checkpoints import RunInterrupted

        if isinstance(exc, RunInterrupted):  # a checkpoint is saved; a scheduler sees a failure
            print(f"tempering: {exc}", file=sys.stderr)
            return exc.exit_code
        # Configuration mistakes (ours, or Lightning's ValueErrors about trainer arguments) are
        # one line; -v or TEMPERING_DEBUG=1 shows the traceback.
        if _verbose(args) or not isinstance(exc, user_errors()):
            raise
        print(f"tempering: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
