"""The ``workbench`` command: list variants, train one, compare several, list stored runs, inspect an adapter
folder (PEFT's or the workbench's own), run the demo, start the dashboard."""

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


def load_adapter_folder(model, path: Path):
    """A PEFT adapter folder (``adapter_config.json``) through ``from_peft``, or a saved workbench adaptation
    (``adaptation.json``) through ``load_adaptation``, on ``model``."""
    from .adapt import load_adaptation
    from .peft_import import from_peft

    if (path / "adapter_config.json").exists():
        return from_peft(model, path)
    if (path / "adaptation.json").exists():
        return load_adaptation(model, path)
    raise FileNotFoundError(f"{path} holds neither a PEFT adapter (adapter_config.json) nor a workbench adaptation "
                            "(adaptation.json)")


def inspection_run(ad, task, probes="all", batch_size: int = 16, eval_batches: int | None = 4, source: str = ""):
    """One probe pass over an adaptation as a step-0 :class:`~workbench.runs.Run`: the gradient probes see the
    gradient of one training batch's loss (eval mode, so dropout is off), then every probe's ``after_step`` runs
    and the task's metric is measured on ``eval_batches`` validation batches. Nothing is trained or changed."""
    import torch

    from .probes import ProbeContext, get_probes
    from .runs import Run, new_run_id

    run = Run(id=new_run_id(ad.variant_name, task.name), status="completed", adaptation=ad,
              config={"task": task.name, "variant": ad.variant_name, "config": ad.config.to_dict(), "seed": ad.seed,
                      "steps": 0, "source": source, "modules": ad.module_names})
    ad.model.eval()
    device = next(ad.model.parameters()).device
    batch = next(iter(task.batches("train", batch_size=batch_size, seed=0)))
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()} if isinstance(batch, dict) \
        else batch
    probe_list = get_probes(probes)
    reference = task.reference_delta() if hasattr(task, "reference_delta") else None
    for p in ad.parameters():
        p.grad = None
    loss = task.loss(ad.model, batch)
    loss.backward()
    for phase in ("before_step", "after_step"):
        for probe in probe_list:
            out = getattr(probe, phase)(ProbeContext(adaptation=ad, task=task, step=0, batch=batch,
                                                     reference=reference))
            for module, key, value in (out.records if out else []):
                run.log(0, probe.name, module, key, value)
            for (module, name), tensor in (out.arrays.items() if out else []):
                run.add_snapshot(0, probe.name, module, name, tensor)
    for p in ad.parameters():
        p.grad = None
    with torch.no_grad():
        result = task.evaluate(ad.model, max_batches=eval_batches)
    for key, value in result.items():
        run.log(0, "eval", "", key, value)
    metric = getattr(task, "metric", "loss")
    run.summary.update({"status": run.status, "steps_done": 0, "trainable_params": ad.num_trainable(),
                        "init_loss": result.get("loss"), "final_loss": result.get("loss"), "metric": metric,
                        "metric_value": result.get(metric), "batch_loss": float(loss.detach()),
                        "higher_is_better": getattr(task, "higher_is_better", False)})
    return run


def inspection_html(run, title: str) -> str:
    """Every probe's view of an inspected adapter as one self-contained HTML page (plotly.js embedded once)."""
    import html

    from . import figures

    modules = list(dict.fromkeys(run.metrics.module[run.metrics.module != ""]))
    table = (run.metrics[run.metrics.module != ""].pivot_table(index="module", columns=["probe", "key"],
                                                               values="value", sort=False)
             if modules else pd.DataFrame())
    figs = [("Singular values of ΔW, per module", figures.small_multiples([run], "spectra")),
            ("Variant views", figures.variant_views(run))]
    if any(hasattr(layer, "magnitude") for _, layer in run.adaptation.named_layers()):  # DoRA-style m
        figs.append(("Magnitudes", figures.magnitude_view(run)))
    if modules:
        figs.append((f"Frequency map · {modules[0]}", figures.frequency_map(run, modules[0],
                                                                           kind=figures.frequency_basis(run))))
    s = run.summary
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(run.variant)} · {s.get('trainable_params', 0):,} adapter parameters · "
             f"{html.escape(str(s.get('metric')))} = {html.escape(figures.fmt_number(s.get('metric_value')))} "
             f"(validation, a few batches) · loss of one training batch {s.get('batch_loss', float('nan')):.4g}</p>",
             "<h2>Probe values per module</h2>", table.to_html(float_format=lambda v: f"{v:.4g}", border=0)]
    for i, (heading, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
            "table{font-size:12px;border-collapse:collapse}td,th{padding:2px 6px}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def cmd_inspect(args) -> None:
    """Open an adapter folder on a task's model, run every probe on it once, print the values and write HTML."""
    from . import tasks
    from .runs import RunStore

    path = Path(args.path)
    options = _pairs("--option", args.option)
    cls = tasks.task_class(args.task)
    task = tasks.get(args.task, **(cls.option_class.from_strings(options) if options and cls.option_class
                                   else options))
    ad = load_adapter_folder(task.model(), path)
    probes = args.probes[0] if args.probes in (["all"], ["default"]) else args.probes
    run = inspection_run(ad, task, probes=probes, eval_batches=args.eval_batches, source=str(path))
    m = run.metrics
    _print(m[m.module != ""].pivot_table(index="module", columns="key", values="value", sort=False).reset_index())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(inspection_html(run, f"{path.name}: {ad.variant_name} on {task.name}"), encoding="utf-8")
    print(f"{ad.variant_name} adapter on {len(ad.module_names)} modules; {run.summary['metric']} = "
          f"{run.summary['metric_value']}; report written to {out}")
    if args.runs:
        RunStore(args.runs).save(run)
        print(f"stored as run {run.id} in {args.runs} (open it in the dashboard's Inspect tab)")


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


def cmd_claims(args) -> None:
    """List the declared claims (``--list``: name, variant, recorded verdict), check the ledger (``--check``), or
    run claims and rewrite docs/CLAIMS.md and docs/claims.json (:func:`workbench.claims.run_claims`)."""
    from . import claims

    if args.list:
        entries = claims.load_record(args.root).get("claims", {})
        rows = []
        for c in claims.claims():
            e = entries.get(c.name)
            recorded = e["verdict"] if e and e.get("digest") == c.digest() else "not run" if not e else "stale"
            rows.append({"claim": c.name, "variant": c.variant, "effect": c.describe_effect(), "seeds": c.seeds,
                         "test": c.test, "verdict": recorded})
        _print(pd.DataFrame(rows))
        return
    if args.check:
        stale = claims.stale_claims(args.root)
        if stale:
            raise ConfigError("stale claims ledger: " + "; ".join(stale) + "; run `workbench claims`")
        print("the claims ledger is up to date")
        return
    # one thread by default: with two, identical runs of LoRA-Pro's claim gave seed 0 values from 0.228 to 0.261
    # (reductions split differently from run to run); on one, a rerun reproduces the ledger's numbers exactly
    import torch

    if args.threads < 1:
        raise ConfigError(f"claims: --threads={args.threads} is invalid; --threads must be an integer ≥ 1")
    torch.set_num_threads(args.threads)
    results = claims.run_claims(args.names or None, executor=args.executor, store=args.runs, root=args.root)
    print(f"wrote {Path(args.root) / claims.runner.LEDGER_MD} ({len(results)} claims run)")


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

    i = sub.add_parser("inspect", help="open an adapter folder (PEFT or workbench) on a task's model and write an "
                                       "HTML report of every probe on it")
    i.add_argument("path", help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or a saved "
                                "workbench adaptation")
    i.add_argument("--task", required=True, help="the task whose model the adapter was trained on, e.g. text:sst2")
    i.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="task options, e.g. data_dir=... model=...")
    i.add_argument("--out", default="out/inspect.html", help="the HTML report to write")
    i.add_argument("--probes", nargs="+", default=["all"], help="probe names, or 'all' / 'default'")
    i.add_argument("--eval-batches", type=int, default=4, help="validation batches for the task's metric")
    i.add_argument("--runs", default=None, help="also store the inspection as a run in this folder")
    i.set_defaults(fn=cmd_inspect)

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

    k = sub.add_parser("claims", help="run the claims ledger (each paper's claim in a small experiment) and write "
                                      "docs/CLAIMS.md and docs/claims.json")
    k.add_argument("names", nargs="*", help="claims to run (default: every declared claim)")
    k.add_argument("--executor", choices=("local", "ray"), default="local", help="train the runs here or on Ray")
    k.add_argument("--list", action="store_true", help="list the declared claims and their recorded verdicts")
    k.add_argument("--check", action="store_true", help="run nothing; exit 2 when the ledger is stale")
    k.add_argument("--runs", default=None, help="also store the claims' runs in this folder")
    k.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reruns reproduce the "
                                                           "ledger exactly; Ray's workers use one each)")
    k.add_argument("--root", default=".", help="the repository folder (holds docs/)")
    k.set_defaults(fn=cmd_claims)

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
