"""The ``recipe`` command line.

Start-up stays fast: only the recipe language is imported at module level; torch and the
pipeline are imported inside the commands that need them (run, plan, sensitivity).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .recipe.errors import RecipeError
from .util.jsonio import json_text

SET_HELP = "Override a key after extends: KEY is a dotted path, VALUE is YAML (repeatable)."
SCHEMA_FILE = Path("schemas") / "recipe.schema.json"


class RecipeGroup(click.Group):
    """A click group that turns user errors into a message and exit code 1 (traceback with --debug)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from .train import launch

        rank_child = launch.under_launch()  # a rank of `recipe run --nproc`: the parent prints the errors
        if rank_child:
            launch.install_sigterm_handler()
        try:
            return super().invoke(ctx)
        except RecipeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            text = f"error: {exc.format()}" if not exc.diagnostics else exc.format()
            if rank_child:
                launch.report_rank_error(text)
            else:
                click.echo(text, err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - under --nproc every rank's failure is one line
            if not rank_child or (ctx.obj and ctx.obj.get("debug")):
                raise
            import traceback

            launch.report_rank_error("".join(traceback.format_exception_only(type(exc), exc)).strip())
            sys.exit(1)


@click.group(cls=RecipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recipe")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Quantize PyTorch models to INT8 from declarative YAML recipes."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug:
        _quiet_upstream_noise()


def _quiet_upstream_noise() -> None:
    """Hide warnings that upstream libraries print on every run and that users cannot act on."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


@main.command()
@click.argument("recipe_files", nargs=-1, required=True, metavar="RECIPE...")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--quiet", "-q", is_flag=True, help="Print errors only.")
def validate(recipe_files: tuple[str, ...], overrides: tuple[str, ...], quiet: bool) -> None:
    """Check recipes: exit 0 when all are valid, else 1 with FILE:LINE:COL: messages."""
    from .recipe import load_recipe

    failed = False
    for name in recipe_files:
        try:
            loaded = load_recipe(name, overrides)
        except RecipeError as exc:
            failed = True
            click.echo(exc.format(), err=True)
            continue
        if not quiet:
            spec = loaded.spec
            click.echo(f"{loaded.path}: ok ({spec.recipe} {spec.version}, sha256 {loaded.sha256[:12]})")
            imports = spec.imports()
            if imports:
                click.echo("  code it runs (imported; callables are also called):")
                for item in imports:
                    click.echo(f"    {item.format()}")
    sys.exit(1 if failed else 0)


@main.command(name="schema")
@click.option("--check", is_flag=True, help="Exit 1 if the committed schema file is stale.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Schema file (default: {SCHEMA_FILE} in the project).")
def schema_command(check: bool, output: Path | None) -> None:
    """Write (or --check) schemas/recipe.schema.json from the recipe models.

    Installed (not a checkout) without --output: print the schema on stdout."""
    from .recipe.schema_file import default_schema_path, schema_text
    from .util.atomic import atomic_write_text

    target = output or default_schema_path()
    text = schema_text()
    if target is None:  # an installed package: no checkout to write into or check
        if check:
            raise RecipeError("recipe schema --check: this recipe-engine is installed, not a project checkout, "
                              "so there is no committed schema file to check",
                              hint="pass the file to check: recipe schema --check --output recipe.schema.json")
        click.echo(text, nl=False)  # `recipe schema > recipe.schema.json`, or -o FILE
        return
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            raise RecipeError(f"{target} is stale", hint="run `recipe schema` and commit the result")
        click.echo(f"{target}: up to date")
        return
    atomic_write_text(target, text)
    click.echo(f"wrote {target}")


@main.command(name="list")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(directory: Path | None, as_json: bool) -> None:
    """Show the recipe catalogue: name, version, description, file."""
    from .recipe.catalogue import scan

    entries = scan(directory)
    if as_json:
        click.echo(json_text([e.as_dict() for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "version", "description", "file", box=None, pad_edge=False)
    for entry in entries:
        table.add_row(entry.name, entry.version, entry.description, entry.file,
                      style="red" if entry.error else None)
    Console(width=200).print(table)
    if any(e.error for e in entries):
        for entry in entries:
            if entry.error:
                click.echo(f"invalid: {entry.file}: {entry.error}", err=True)


@main.command()
@click.argument("recipe_a")
@click.argument("recipe_b")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Applied to both recipes.")
@click.option("--exit-code", is_flag=True, help="Exit 1 when the recipes differ (like git diff --exit-code).")
def diff(recipe_a: str, recipe_b: str, overrides: tuple[str, ...], exit_code: bool) -> None:
    """Show the differences between two resolved recipes."""
    from .recipe import load_recipe
    from .recipe.diffing import diff_recipes

    a = load_recipe(recipe_a, overrides)
    b = load_recipe(recipe_b, overrides)
    lines = diff_recipes(a.spec, b.spec)
    if not lines:
        click.echo("recipes are identical after resolution (sha256 " + a.sha256[:12] + ")")
        return
    click.echo(f"--- {a.path} ({a.spec.recipe} {a.spec.version})")
    click.echo(f"+++ {b.path} ({b.spec.recipe} {b.spec.version})")
    for line in lines:
        click.echo(line)
    if exit_code:
        sys.exit(1)


@main.command()
@click.argument("recipe_file", metavar="RECIPE")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Emit the plan as JSON.")
def plan(recipe_file: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Show what every rule, fusion, share group and disable entry selects; changes nothing."""
    from .pipeline import plan_recipe
    from .recipe import load_recipe

    loaded = load_recipe(recipe_file, overrides)
    result = plan_recipe(loaded)
    if as_json:
        click.echo(json_text(result.as_dict(), indent=2))
    else:
        click.echo(result.format())


@main.command()
@click.argument("recipe_file", metavar="RECIPE")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default: runs/<recipe name>).")
@click.option("--resume/--no-resume", default=None,
              help="QAT: continue from the run directory's checkpoint (--resume requires one). Default: resume "
                   "automatically when it holds a checkpoint of the same recipe (sha256).")
@click.option("--overwrite", is_flag=True,
              help="Allow this run to replace a QAT checkpoint of another recipe in the run directory.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Run on N local processes under torchrun (gloo on CPU, nccl on GPU).")
@click.option("--quiet", "-q", is_flag=True, help="Print errors only (no stage lines, bars or summary).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the metrics JSON (as in metrics.json) on stdout and nothing else there.")
@click.pass_context
def run(ctx: click.Context, recipe_file: str, overrides: tuple[str, ...], out_dir: Path | None,
        resume: bool | None, overwrite: bool, nproc: int | None, quiet: bool, as_json: bool) -> None:
    """Run the whole pipeline: fuse, quantize, calibrate, evaluate, [QAT,] save, export.

    Prints a line per stage with its duration on stderr, then a summary table (metrics FP32/INT8/drop,
    each export's status). The run is built next to the run directory and moved into place when it
    completes; a failed run leaves its record (metrics.json, report.md, files so far) in
    <run directory>.failed and exits 1.
    """
    from .recipe import load_recipe
    from .recipe.paths import safe_dir_name

    loaded = load_recipe(recipe_file, overrides)
    target = out_dir or Path("runs") / safe_dir_name(loaded.spec.recipe)
    if nproc is not None:
        from .train.distributed import launch

        args = [*(["--debug"] if ctx.obj.get("debug") else []), "run", recipe_file, "--out", str(target),
                *(f"--set={o}" for o in overrides), *(["--overwrite"] if overwrite else []),
                *(["--quiet"] if quiet else []), *(["--json"] if as_json else [])]
        if resume is not None:
            args.append("--resume" if resume else "--no-resume")
        sys.exit(launch(nproc, args))

    from .console import Story, print_summary
    from .pipeline import run_recipe
    from .train.distributed import is_main

    story = Story(quiet=quiet)
    metrics = run_recipe(loaded, target, show_progress=not quiet, resume=resume, overwrite=overwrite, story=story)
    if not is_main():
        return
    if as_json:
        click.echo(json_text(metrics, indent=2, default=str))
    elif not quiet:
        print_summary(metrics, target)


@main.command(name="init")
@click.argument("start_file", required=False, metavar="[START.yaml]")
@click.option("--model", "model_factory", metavar="MODULE:CALLABLE", help="Model factory (model.factory).")
@click.option("--model-kwargs", metavar="JSON", help="Its keyword arguments, a JSON object.")
@click.option("--data", "data_factory", metavar="MODULE:CALLABLE", help="Calibration data (data.calibration).")
@click.option("--data-kwargs", metavar="JSON", help="Its keyword arguments, a JSON object.")
@click.option("--validation", metavar="MODULE:CALLABLE", help="Validation data (data.validation).")
@click.option("--forward", metavar="MODULE:CALLABLE", help="(model, batch) -> output (data.forward).")
@click.option("--evaluate", metavar="MODULE:CALLABLE", help="(model, batches) -> {metric: value} (data.evaluate).")
@click.option("--name", help="Recipe name (default: <model module>-int8-draft).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("recipe.draft.yaml"),
              show_default=True, help="Where to write the draft.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--explain", is_flag=True, help="Print why each entry is there.")
def init_command(start_file: str | None, model_factory: str | None, model_kwargs: str | None,
                 data_factory: str | None, data_kwargs: str | None, validation: str | None, forward: str | None,
                 evaluate: str | None, name: str | None, output: Path, force: bool, explain: bool) -> None:
    """Draft a commented starter recipe: trace one batch, find fusions, op sites, share groups, exports.

    Give the model and data as options, or START.yaml with a recipe's `model:` and `data:` keys.
    The draft passes `recipe plan`; entries it could not keep are written as comments with the reason.
    """
    from .draft import draft_recipe, start_from_file, start_from_options

    options = [o for o in (model_factory, model_kwargs, data_factory, data_kwargs, validation, forward, evaluate) if o]
    if start_file and options:
        raise click.UsageError("give START.yaml or --model/--data options, not both")
    if not start_file and not (model_factory and data_factory):
        raise click.UsageError("give --model and --data (or START.yaml with model: and data:)")
    if output.exists() and not force:
        raise RecipeError(f"{output} exists", hint="choose another --output or pass --force to replace it")
    start = start_from_file(start_file) if start_file else start_from_options(
        model_factory, data_factory, model_kwargs=model_kwargs, data_kwargs=data_kwargs, validation=validation,
        forward=forward, evaluate=evaluate, name=name)
    result = draft_recipe(start, output, name=name)
    if explain:
        click.echo("\n".join(result.explain()))
    click.echo(result.summary())


@main.command()
@click.argument("model_file", metavar="MODEL.pt", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model_file: Path, as_json: bool) -> None:
    """Show a saved model's recipe, quantizers (amax, enabled), disabled set and exports.

    Reads the file with torch.load(weights_only=True); imports and calls nothing the file names.
    """
    from .inspection import inspect_model, print_inspection

    info = inspect_model(model_file)
    if as_json:
        click.echo(json_text(info, indent=2, default=str))
    else:
        print_inspection(info)


@main.command()
@click.argument("recipe_file", metavar="RECIPE")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default: runs/<recipe name>-sensitivity).")
@click.option("--max-drop", type=float, default=None,
              help="Allowed drop of the evaluate metric for the derived recipe (default 1.0).")
@click.option("--min-sqnr", type=float, default=30.0, show_default=True,
              help="Target output SQNR (dB) for the derived recipe when the recipe has no data.evaluate.")
def sensitivity(recipe_file: str, overrides: tuple[str, ...], out_dir: Path | None, max_drop: float | None,
                min_sqnr: float) -> None:
    """Per-group sensitivity table, CSV/JSON, bar chart and a derived recipe that meets a target."""
    from .analyze.runner import run_sensitivity
    from .recipe import load_recipe

    loaded = load_recipe(recipe_file, overrides)
    from .recipe.paths import safe_dir_name

    target = out_dir or Path("runs") / (safe_dir_name(loaded.spec.recipe) + "-sensitivity")
    table = run_sensitivity(loaded, target, max_drop=max_drop, min_sqnr=min_sqnr)
    from rich.console import Console
    from rich.table import Table

    from .quant.precision import of_metrics

    view = Table("group", "only this", "all but this", "gain if disabled", box=None,
                 title=f"{table['metric']}: FP32 {table['fp32']:.4g}, {of_metrics(table)} {table['int8']:.4g}")
    for row in table["groups"]:
        view.add_row(row["group"], f"{row['only_this']:.4g}", f"{row['all_but_this']:.4g}",
                     f"{row['gain_if_disabled']:+.4g}")
    Console(width=160).print(view)
    derived = table["derived"]
    status = "meets" if derived["success"] else "does NOT meet"
    click.echo(f"derived recipe {derived['path']} disables {len(derived['disabled_groups'])} group(s) and "
               f"{status} the target {derived['target']:.4g} ({table['metric']} {derived['steps'][-1]['metric']:.4g})")
    click.echo(f"wrote {target}/sensitivity.json, sensitivity.csv, sensitivity.png")


if __name__ == "__main__":  # pragma: no cover
    main()
