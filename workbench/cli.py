"""The ``workbench`` command: list variants, train one, compare several, list stored runs, run the demo, start
the dashboard."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

import pandas as pd

from .dashboard.arguments import add_arguments as add_dashboard_arguments  # no Gradio import
from .errors import ConfigError


def _pairs(flag: str, pairs: list[str] | None) -> dict[str, str]:
    """``--set r=8 alpha=16`` as ``{"r": "8", "alpha": "16"}``; the declaration then types each value."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _add_settings_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per :class:`~workbench.settings.TrainSettings` field, from its declaration. Values stay text
    here and are typed and checked by the declaration, so the CLI's errors are the library's."""
    from .options import allowed
    from .settings import TrainSettings

    group = parser.add_argument_group("training settings (default: the task's, then the variant's preset)")
    for info in TrainSettings.fields_info():
        if info["name"] not in skip:
            group.add_argument("--" + info["name"].replace("_", "-"), dest="setting_" + info["name"], default=None,
                               metavar=info["type"].upper(), help=f"{info['help']} ({allowed(info)})")


def _train_inputs(args, variant: str | None = None) -> dict:
    """The settings, variant config and task options given on the command line, typed by their declarations."""
    from . import tasks
    from .settings import TrainSettings
    from .variant import get_variant

    given = {k[len("setting_"):]: v for k, v in vars(args).items() if k.startswith("setting_") and v is not None}
    out = {"settings": TrainSettings.from_strings(given), "presets": not args.no_presets}
    options = _pairs("--option", args.option)
    if options:
        cls = tasks.task_class(args.task)
        out["task_options"] = cls.option_class.from_strings(options) if cls.option_class else options
    if variant is not None:
        out["config"] = get_variant(variant).Config.from_strings(_pairs("--set", args.set))
    recipe_pairs = _pairs("--recipe-option", getattr(args, "recipe_option", None))
    if recipe_pairs:
        from .recipes import get_recipe

        recipe = given.get("recipe") or (get_variant(variant).default_recipe if variant else None)
        if recipe is None:
            raise ConfigError("--recipe-option needs --recipe NAME (the recipe whose options they are)")
        cls = get_recipe(recipe)
        out["recipe_options"] = cls.Config.from_strings(recipe_pairs, cls.name)
    return out


def _print(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160):
        print(df.to_string(index=False))


def cmd_list(args) -> None:
    from . import tasks
    from .variant import variant_table

    t = variant_table()
    _print(t[["name", "family", "linear_delta", "dynamic", "paper"]])
    print("\ntasks:", ", ".join(tasks.names()))


def cmd_recipes(args) -> None:
    from .options import allowed
    from .recipes import recipe_infos

    for info in recipe_infos():
        print(f"{info.name}: {info.paper}" + ("  [needs LoRA factors]" if info.needs_factors else ""))
        for f in info.fields():
            print(f"    {f['name']} = {f['default']!r}  ({allowed(f)}) {f['help']}")


def cmd_run(args) -> None:
    from .train import train

    run = train(args.task, args.variant, store=args.runs, progress=True, **_train_inputs(args, args.variant))
    s = run.summary
    print(f"run {run.id}: {run.status}; {s['trainable_params']} trainable params; loss {s['init_loss']:.4g} -> "
          f"{s['final_loss'] if s['final_loss'] is not None else float('nan'):.4g}; {s['metric']} = "
          f"{s['metric_value']}; {1000 * s['seconds_per_step']:.1f} ms/step; saved in {args.runs}/{run.id}")
    if run.status == "diverged":
        print(f"training diverged at step {s.get('diverged_at_step')}; the adapter was reset to step "
              f"{s.get('restored_step')}", file=sys.stderr)


def cmd_compare(args) -> None:
    from . import tasks
    from .compare import compare

    lr = "sweep" if args.lr == "sweep" else float(args.lr)
    inputs = _train_inputs(args)
    task = tasks.get(args.task, **inputs.pop("task_options", {}))
    result = compare(task, args.variants, lr=lr, seeds=args.seeds, budget=args.budget, store=args.runs,
                     progress=True, **inputs)  # one bar per run on a terminal
    _print(result.table.drop(columns=["config", "run_id"]))


def cmd_runs(args) -> None:
    from .runs import RunStore

    store = RunStore(args.runs)
    if args.delete:
        store.delete(args.delete)
        print(f"deleted {args.delete}")
        return
    df = store.list()
    _print(df) if len(df) else print(f"no runs in {args.runs}")


def cmd_demo(args) -> None:
    """A side-by-side comparison on a synthetic task, printed as a table and written as an HTML report."""
    from .report import demo_report

    path = demo_report(Path(args.out), steps=args.steps, store=args.runs)
    print(f"report written to {path}")
    if args.open:
        webbrowser.open(path.resolve().as_uri())


def cmd_docs(args) -> None:
    """Rewrite what the registry generates (docs/VARIANTS.md, README.md's variants block); ``--check`` only
    fails when one of them is stale."""
    from .docs import stale_docs, write_docs

    if args.check:
        stale = stale_docs(args.root)
        if stale:
            raise ConfigError(f"stale generated docs: {', '.join(stale)}; run `workbench docs`")
        print("generated docs are up to date")
        return
    written = write_docs(args.root)
    print("\n".join(f"wrote {p}" for p in written) or "generated docs were already up to date")


def cmd_dashboard(args) -> None:
    """The Gradio dashboard (what ``python app.py`` starts): local only unless ``--host`` says otherwise."""
    from .dashboard.app import serve

    serve(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="registered variants and tasks").set_defaults(fn=cmd_list)
    sub.add_parser("recipes", help="optimizer recipes, their papers and options").set_defaults(fn=cmd_recipes)

    r = sub.add_parser("run", help="train one variant on one task")
    r.add_argument("task")
    r.add_argument("variant")
    r.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="variant hyper-parameters, e.g. r=8 alpha=16")
    r.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="task options, e.g. layout=parallel noise=0.1")
    r.add_argument("--no-presets", action="store_true", help="ignore the variant's preset for the task")
    r.add_argument("--recipe-option", nargs="*", metavar="KEY=VALUE",
                   help="options of the --recipe, e.g. mode=alternate period=10 (see `workbench recipes`)")
    r.add_argument("--runs", default="runs", help="run store folder")
    _add_settings_flags(r)
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("compare", help="several variants side by side on one task")
    c.add_argument("task")
    c.add_argument("variants", nargs="+", help="variant names or variant+recipe pairs, e.g. lora lora+altlora")
    c.add_argument("--lr", default="sweep", help="a number, or 'sweep' (rates around the task's default)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0])
    c.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="task options, e.g. layout=parallel noise=0.1")
    c.add_argument("--no-presets", action="store_true", help="ignore the variants' presets for the task")
    c.add_argument("--budget", type=int, default=None, help="match trainable parameters to this count")
    c.add_argument("--runs", default="runs")
    _add_settings_flags(c, skip=("lr", "seed"))
    c.set_defaults(fn=cmd_compare)

    s = sub.add_parser("runs", help="list (or delete) stored runs")
    s.add_argument("--runs", default="runs")
    s.add_argument("--delete", metavar="RUN_ID")
    s.set_defaults(fn=cmd_runs)

    d = sub.add_parser("demo", help="compare LoRA, full fine-tuning and others on a synthetic task; HTML report")
    d.add_argument("--out", default="out/demo.html")
    d.add_argument("--steps", type=int, default=150)
    d.add_argument("--runs", default=None)
    d.add_argument("--open", action="store_true", help="open the report in a browser")
    d.set_defaults(fn=cmd_demo)

    o = sub.add_parser("docs", help="regenerate docs/VARIANTS.md and README.md's variants block from the registry")
    o.add_argument("--root", default=".", help="the repository folder (holds README.md and docs/)")
    o.add_argument("--check", action="store_true", help="write nothing; exit 2 when a generated file is stale")
    o.set_defaults(fn=cmd_docs)

    g = sub.add_parser("dashboard", help="the Gradio dashboard: learn, train live, compare, inspect (binds "
                                         "127.0.0.1 unless --host says otherwise)")
    add_dashboard_arguments(g).set_defaults(fn=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
