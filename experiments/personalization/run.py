"""Personalisation benchmark: every adaptation method x test protocol on the demo corpus, several seeds,
per-rater gains paired against the DMER model, and how they grow with meta-training length.

    python experiments/personalization/run.py                      # demo corpus, 3 seeds (long: CPU hours)
    python experiments/personalization/run.py --tiny --out /tmp/pb # the harness at tiny size (minutes)
    python experiments/personalization/run.py --synth personal --shots 1 2 3 --methods --anil-methods \
        --out outputs/personalization_k     # the DMER model alone on a corpus where k = 3 can be run
    python experiments/personalization/run.py --synth lens --seeds 0 --methods --anil-methods \
        --dmer-methods calibrate ridge ridge_calibrate head auto --out outputs/personalization_lens

Only the project's commands run, each as its own process (`python -m dsaml.cli.<command>`):
1. `dsaml-synth` / `dsaml-preprocess`: the corpus (`--synth` preset) and its feature store (reused when
   already there);
2. per seed: `dsaml-train` of the DMER model (conf/demo.yaml's settings), then one PDMER meta-training run
   per length (`--epochs`, x `steps_per_epoch` meta-batches) from the DMER weights, with the paper's inner
   loop over the whole network (`pdmer_<meta-batches>`) and with the head-only one (`anil_<meta-batches>`,
   task.inner_loop=head, tested with `--anil-methods`); none trained when their methods are empty;
3. `dsaml-eval` of every PDMER checkpoint with every method (`--methods`) under the within-song protocol and
   the cross-song protocol with k = `--shots` support songs (`task.shots`; `--cross-support song`: the
   whole songs, as a user of dsaml-personalize gives them, or `clip`: their first 30 s), of the DMER model
   with 0 adaptation (adaptation=none) under the same protocols (the baseline, same song-rater pairs), and
   of the DMER model with `--dmer-methods` (personalising the model that was never meta-trained); `auto` is
   the selection `dsaml-personalize method=auto` makes, run on each test pair's support. A k that no test
   rater can give (fewer than k + 1 test songs) is skipped, saying so. Whole songs are predicted with
   windows every `--eval-stride` segments (task.eval_stride; stitch=weighted when > 1, within 0.002 of
   every window in the stride benchmark; 1 = the original's protocol);
4. `dsaml-report` per k: scores with 95% intervals over seeds, per-rater gains vs the DMER model with paired
   tests, split by rater kind (the corpus's truth); then one gain-vs-meta-training-length plot;
5. per k, `ceiling.py`'s table for the DMER models: calibrate against the best per-listener and per-song
   output maps fitted with hindsight (what no gain, offset and delay per listener can exceed).
Runs whose results.json exists are kept (a stopped benchmark resumes). Results: <out>/report/k<k>/report.md,
<out>/growth.png, <out>/summary.md.

With `--evaluator lens_eval` steps 3-5 are lens_eval.py instead (the cross-song protocol only, every song
encoded once; dsaml-eval re-encodes every support song for every pair and method, hours on a lens corpus
here): per seed, the DMER model with `--dmer-methods` and every PDMER model with `--methods` /
`--anil-methods` paired against it (`--baseline`), into <out>/lens_eval/<model>_seed_<seed>.md (kept when
there), then each model's tables merged over the seeds (seeds_table.py) into <out>/summary.md:

    python experiments/personalization/run.py --synth lens --evaluator lens_eval --epochs 3 \
        --dmer-methods calibrate listener_prior auto --methods maml listener_prior --anil-methods \
        --out outputs/lens
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from ceiling import ceiling_table  # this folder's ceiling.py
from hydra import compose, initialize_config_dir
from lens import lens_tables  # this folder's lens.py
from lens_eval import METHODS as LENS_EVAL_METHODS  # this folder's lens_eval.py
from lens_eval import REPLAYED as LENS_EVAL_REPLAYED
from omegaconf import OmegaConf
from seeds_table import merged, read_tables  # this folder's seeds_table.py

from dsaml.config import CONFIG_DIR
from dsaml.data.synth import load_truth
from dsaml.meta.methods import AUTO
from dsaml.meta.methods import METHODS as ADAPTATION_METHODS
from dsaml.reporting import markdown
from dsaml.training.runs import best_checkpoint, to_overrides
from dsaml.training.smoke import tiny_model_mapping

HERE = Path(__file__).resolve().parent
SYNTH_PRESETS = sorted(path.stem for path in (CONFIG_DIR / "synth").glob("*.yaml"))
WITHIN, CROSS = "pdmer_within_song", "pdmer_cross_song"
METHODS = (*ADAPTATION_METHODS, AUTO)  # dsaml-eval adaptation=<method> (conf/adaptation/)
# the PDMER test settings the DMER checkpoint is scored with (it records a DMER task)
TASK_KEYS = ("support_segments", "eval_batch_size", "inner_steps", "inner_lr", "first_order")
TINY = {
    "synth": "tiny",
    "dmer": [f"+model={tiny_model_mapping()}", "trainer.max_epochs=1"],
    "pdmer": [f"+model={tiny_model_mapping()}", "task.steps_per_epoch=2"],
}


def run_step(argv: list[str], shown: str) -> None:
    """Run python with `argv` in its own process, printed as `shown`; stop the benchmark when it fails."""
    print(f"$ {shown}", flush=True)
    if subprocess.run([sys.executable, *argv]).returncode:
        sys.exit(f"{shown.split()[0]} failed (see above); the finished runs are kept")


def command(name: str, overrides: list[str]) -> None:
    """Run `dsaml-<name> overrides...` in its own process; stop the benchmark when it fails."""
    run_step(["-m", f"dsaml.cli.{name}", *overrides], " ".join([f"dsaml-{name}", *overrides]))


def pdmer_task(settings: list[str]) -> dict:
    """The task section of the dsaml-train config that the PDMER `settings` compose to."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=settings).task, resolve=True)


def train(settings: list[str], seed: int, store: Path, directory: Path, extra: list[str]) -> Path:
    """A dsaml-train run (fit only) into `directory`; returns its selected checkpoint."""
    if not (directory / "checkpoints").is_dir():
        command(
            "train",
            [*settings, *extra, f"seed={seed}", f"paths.store={store}", f"hydra.run.dir={directory}",
             "test=false", "logger=none", "trainer.enable_model_summary=false"],
        )  # fmt: skip
    return best_checkpoint(directory)


def evaluate(
    ckpt: Path, task: dict, protocols: list[str], method: str, store: Path, out: Path, extra: tuple = ()
) -> None:
    """dsaml-eval of `ckpt` with the PDMER test settings `task` (TASK_KEYS, shots, cross_support, eval_stride,
    stitch) and `method` (more dsaml-eval overrides: `extra`) into `out`."""
    if (out / "results.json").is_file():
        return
    settings = [f"+overrides.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in task.items()]
    command(
        "evaluate",
        [f"ckpt_path={ckpt}", "data=synthetic", "task=pdmer", f"protocols=[{','.join(protocols)}]",
         *settings, f"adaptation={method}", *extra, f"paths.store={store}",
         f"hydra.run.dir={out}", "hydra.output_subdir=null", "trainer.enable_model_summary=false"],
    )  # fmt: skip


def lens_evaluate(out: Path, arguments: list[str]) -> None:
    """lens_eval.py `arguments` with its tables written to `out` (kept when there)."""
    if out.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    run_step(
        [str(HERE / "lens_eval.py"), *arguments, "--out", str(out)], "lens_eval.py " + " ".join(arguments)
    )


def merged_over_seeds(folder: Path, seeds: list[int]) -> str:
    """Each model's lens_eval.py tables in `folder` (<model>_seed_<seed>.md) merged over `seeds`."""
    parts = []
    models = {path.name.rsplit("_seed_", 1)[0] for path in folder.glob("*_seed_*.md")}
    for model in sorted(models, key=lambda m: (m != "dmer", m)):  # the DMER model first
        tables = [read_tables(folder / f"{model}_seed_{seed}.md") for seed in seeds]
        parts.append(f"## {model}, {len(seeds)} seeds (lens_eval.py, merged by seeds_table.py)")
        for k in tables[0]:
            parts.append(f"#### k = {k}\n\n{markdown(*merged([t[k] for t in tables]))}")
    return "\n\n".join(parts)


def feasible_shots(store: Path, shots: list[int]) -> list[int]:
    """The k a test rater can give (k + 1 test songs: k to adapt on, one to score); says which are not."""
    from dsaml.data.store import FeatureStore

    reader = FeatureStore(store)
    counts = [len(reader.songs_of_rater(r, "test")) for r in reader.raters("test")]
    for k in shots:
        raters = sum(n > k for n in counts)
        print(f"cross-song k={k}: {raters} of {len(counts)} test raters have k + 1 test songs", flush=True)
    return [k for k in shots if any(n > k for n in counts)]


def growth_table(out: Path, shots: list[int]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """{protocol: {"<method>" or "ANIL-trained <method>": [(meta-batches, mean gain, 95% half-width)]}} from
    the reports (protocols: within-song, cross-song k=<k>)."""
    panels: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for k in shots:
        report = json.loads((out / "report" / f"k{k}" / "report.json").read_text())
        for gain in report["gains"]:
            match = re.fullmatch(r"(pdmer|anil)_(\d+)_(\w+)", gain["label"])
            if match:
                protocol = "within-song" if gain["protocol"] == WITHIN else f"cross-song k={k}"
                model = "" if match.group(1) == "pdmer" else "ANIL-trained "
                name = f"{model}{gain['method'] or match.group(3)}"
                panels.setdefault(protocol, {}).setdefault(name, []).append(
                    (int(match.group(2)), gain["mean"], gain["ci"])
                )
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/personalization", help="benchmark folder")
    parser.add_argument("--data", default="data", help="where the corpus and its store go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        choices=METHODS,
        help="methods tested on the PDMER models (none given: no PDMER model is trained)",
    )
    parser.add_argument("--dmer-methods", nargs="+", default=["calibrate", "head", AUTO], choices=METHODS)
    parser.add_argument(
        "--auto-methods",
        nargs="+",
        default=None,
        choices=ADAPTATION_METHODS[1:],
        help="auto's candidates with >= 2 songs (adaptation.auto_methods; default: conf/adaptation's)",
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3], help="cross-song support songs k")
    parser.add_argument("--cross-support", default="song", choices=["song", "clip"])
    parser.add_argument("--eval-stride", type=int, default=10, help="task.eval_stride (1: every window)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 9], help="PDMER meta-training lengths")
    parser.add_argument(
        "--anil-methods",
        nargs="*",
        default=["head", "head_calibrate"],
        choices=METHODS,
        help="methods tested on PDMER models meta-trained with the head-only inner loop (none: not trained)",
    )
    parser.add_argument(
        "--synth",
        default="demo",
        choices=SYNTH_PRESETS,
        help="dsaml-synth corpus preset (conf/synth/): demo, personal (more test songs per listener) or lens "
        "(listeners who weight the music's cues differently; adds lens.py's tables)",
    )
    parser.add_argument(
        "--evaluator",
        default="dsaml-eval",
        choices=("dsaml-eval", "lens_eval"),
        help="dsaml-eval (every protocol, dsaml-report) or lens_eval.py (cross-song, each song encoded once)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny corpus and network: checks the harness")
    args = parser.parse_args()
    if args.evaluator == "lens_eval":
        for flag in ("methods", "anil_methods", "dmer_methods"):
            wrong = sorted(set(getattr(args, flag)) - set(LENS_EVAL_METHODS) - {"none"})
            if wrong:
                parser.error(
                    f"--{flag.replace('_', '-')} {' '.join(wrong)}: lens_eval.py runs "
                    f"{', '.join(LENS_EVAL_METHODS)} (and none)"
                )
        if not set(args.dmer_methods) - {"none"}:
            parser.error("--dmer-methods none: lens_eval.py needs a method besides none (its rows are gains)")
        if set(args.auto_methods or []) - set(LENS_EVAL_REPLAYED):
            parser.error(f"--auto-methods: lens_eval.py replays auto over {', '.join(LENS_EVAL_REPLAYED)}")

    demo = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "demo.yaml"))
    preset = TINY["synth"] if args.tiny else args.synth
    out, corpus = Path(args.out), Path(args.data) / "synthetic" / preset
    store = Path(args.data) / "stores" / f"synthetic_{preset}.h5"
    command("synth", [f"synth={preset}", f"out={corpus}", "seed=0"])
    if not store.is_file():
        command("preprocess", ["data=synthetic", f"data.root={corpus}", f"paths.store={store}"])
    dmer_settings = to_overrides(demo["dmer"]) + (TINY["dmer"] if args.tiny else [])
    pdmer_settings = to_overrides(demo["pdmer"]) + (TINY["pdmer"] if args.tiny else [])
    steps = 2 if args.tiny else int(demo["pdmer"]["task"]["steps_per_epoch"])
    shots = feasible_shots(store, args.shots)
    if not shots:
        sys.exit("no test rater has two test songs: the cross-song protocol has nothing to score")
    auto_override = f"adaptation.auto_methods=[{','.join(args.auto_methods or [])}]"
    meta_trained = {  # PDMER models: name -> (methods tested, meta-training settings)
        "pdmer": (args.methods, []),
        "anil": (args.anil_methods, ["task.inner_loop=head"]),  # the head-only inner loop
    }
    for seed in args.seeds:
        runs = out / "train" / f"seed_{seed}"
        dmer = train(dmer_settings, seed, store, runs / "dmer", [])
        models = {  # name -> {meta-batches: checkpoint} of the PDMER runs `<name>_<meta-batches>`
            name: {
                epochs * steps: train(pdmer_settings, seed, store, runs / f"{name}_{epochs * steps}",
                                      [f"init_from={dmer}", f"trainer.max_epochs={epochs}", *extra])
                for epochs in args.epochs
            }
            for name, (methods, extra) in meta_trained.items() if methods
        }  # fmt: skip
        if args.evaluator == "lens_eval":
            common = ["--store", str(store), "--corpus", str(corpus), "--seed", str(seed), "--shots"]
            common += [str(k) for k in shots]
            if args.auto_methods:
                common += ["--auto-methods", *args.auto_methods]
            dmer_methods = [m for m in args.dmer_methods if m != "none"]
            lens_evaluate(out / "lens_eval" / f"dmer_seed_{seed}.md", [*common, "--ckpt", str(dmer),
                          "--methods", *dmer_methods])  # fmt: skip
            for name, checkpoints in models.items():
                methods = [m for m in meta_trained[name][0] if m != "none"]
                for length, ckpt in checkpoints.items():
                    label = f"{name}_{length}"
                    paired = ["--ckpt", str(ckpt), "--baseline", str(dmer), "--label", label]
                    lens_evaluate(out / "lens_eval" / f"{label}_seed_{seed}.md", [*common, *paired,
                                  "--methods", *methods, "--baseline-methods", *dmer_methods])  # fmt: skip
            continue
        from dsaml.models.checkpoint import load_network

        trained = (  # the PDMER test settings: the meta-trained model's, else those it would have had
            load_network(next(iter(models["pdmer"].values())))[2]["task"] if "pdmer" in models
            else pdmer_task(pdmer_settings)
        )  # fmt: skip
        for k in shots:
            protocols = [WITHIN, CROSS] if k == shots[0] else [CROSS]
            task = {key: trained[key] for key in TASK_KEYS} | {
                "shots": k,
                "cross_support": args.cross_support,
                "eval_stride": args.eval_stride,
                "stitch": "weighted" if args.eval_stride > 1 else trained["stitch"],
            }
            runs_k = out / f"k{k}"
            evaluate(dmer, task, protocols, "none", store, runs_k / "dmer" / f"seed_{seed}")
            for method in args.dmer_methods:
                extra = (auto_override,) if method == AUTO and args.auto_methods else ()
                evaluate(
                    dmer, task, protocols, method, store, runs_k / f"dmer_{method}" / f"seed_{seed}", extra
                )
            for name, checkpoints in models.items():
                for length, ckpt in checkpoints.items():
                    for method in meta_trained[name][0]:
                        folder = runs_k / f"{name}_{length}_{method}" / f"seed_{seed}"
                        evaluate(ckpt, task, protocols, method, store, folder)
    if args.evaluator == "lens_eval":
        (out / "summary.md").write_text(merged_over_seeds(out / "lens_eval", args.seeds))
        print(f"benchmark -> {out / 'summary.md'}")
        return
    for k in shots:
        report = out / "report" / f"k{k}"
        command("report", [f"runs=[{out / f'k{k}'}]", "baseline=dmer", f"corpus={corpus}", f"out={report}"])
    growth = growth_table(out, shots)
    if growth:  # PDMER models were meta-trained
        from dsaml.plots import plot_gain_growth

        title = (
            f"Per-rater gain vs the DMER model against meta-training length ({len(args.seeds)} seeds, 95% CI)"
        )
        plot_gain_growth(out / "growth.png", growth, "PDMER meta-batches", title)
    parts = [(out / "report" / f"k{k}" / "report.md").read_text() for k in shots]
    dmer_models = [str(best_checkpoint(out / "train" / f"seed_{seed}" / "dmer")) for seed in args.seeds]
    for k in shots:  # what a per-listener output map could reach on the same pairs (ceiling.py)
        table = ceiling_table(dmer_models, args.seeds, str(store), str(corpus), k, scan=True)
        parts.append(f"## The DMER model's output-map ceilings, k = {k} (ceiling.py)\n\n{table}\n")
    if any("cues" in song for song in load_truth(corpus)["songs"].values()):  # lens listeners: lens.py
        tables = lens_tables(out, shots, str(corpus), str(store), args.seeds)
        parts.append(f"## Gains by distance from the mean listener, with the oracles (lens.py)\n\n{tables}")
    (out / "summary.md").write_text("\n\n".join(parts))
    print(f"benchmark -> {out / 'summary.md'}" + (f", {out / 'growth.png'}" if growth else ""))


if __name__ == "__main__":
    main()
