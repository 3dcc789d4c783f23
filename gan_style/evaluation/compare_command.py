"""``gan-style compare``: several models on the same photos, an HTML report and a preference study.

    gan-style compare --checkpoint RUN_A --checkpoint LABEL=RUN_B [--stylize gatys:STYLE.jpg]
                      [--stylize adain:STYLE.jpg --adain-decoder FILE] [--vgg-weights FILE]
                      --input PHOTOS --real PAINTINGS --output REPORT
    gan-style compare --serve REPORT [--host 127.0.0.1 --port 8765]   the study, votes saved
    gan-style compare --tally REPORT [--votes FILE ...]                rank from the votes

REPORT holds index.html (grid, metrics, training cost, ranking), study.html (the two-up study),
manifest.json (what was compared), images/ and, once people voted, votes.jsonl and ranking.json.
Heavy dependencies are imported inside the functions: ``gan-style --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_style.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

STYLIZERS = ("gatys", "adain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_argument_group("what to do (one of: make a report with --output, --serve, --tally)")
    mode.add_argument("--output", metavar="REPORT", help="make the report in this folder (new, empty, or a previous report to replace)")
    mode.add_argument("--serve", metavar="REPORT", help="serve REPORT's study on --host:--port; votes are appended to REPORT/votes.jsonl")
    mode.add_argument("--tally", metavar="REPORT", help="rank the methods from REPORT/votes.jsonl (and --votes files); adds the ranking to index.html")

    make = parser.add_argument_group("making a report")
    make.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
                      help="a run folder, a gan_style .pt or an official .pth; repeat for each model (LABEL names its column)")
    make.add_argument("--stylize", action="append", default=[], metavar="METHOD:STYLE",
                      help="a style-transfer baseline column: gatys:STYLE.jpg (needs --vgg-weights) or adain:STYLE.jpg (needs --adain-decoder)")
    make.add_argument("--input", metavar="PHOTOS", help="the photos to translate: a folder or an image file")
    make.add_argument("--real", metavar="PAINTINGS", help="a folder of real target-domain images, for the metrics")
    make.add_argument("--max-photos", type=int, default=None, metavar="N", help="use the first N photos (sorted by path)")
    make.add_argument("--size", type=int, default=256, metavar="PX", help="photos larger than PX on their longest side are shrunk to it (default 256)")
    make.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="which generator of a two-way method (default AtoB)")
    make.add_argument("--with", dest="with_inputs", action="append", metavar="NAME=VALUE",
                      help="an extra input for every model that takes it, e.g. --with texture=painting.jpg (swapae), --with style=s.jpg (an AdaIN run)")
    make.add_argument("--metrics", default=None, metavar="M1,M2",
                      help="metrics of each column (default swd,ssim, plus fid,kid with --inception-weights, content,style with --vgg-weights)")
    make.add_argument("--inception-weights", metavar="FILE", help="Inception-v3 weights for FID and KID (see gan-style eval --help)")
    make.add_argument("--vgg-weights", metavar="FILE", help="torchvision's VGG-19 (vgg19-dcbb9e9d.pth): the gatys baseline and the content/style metrics")
    make.add_argument("--adain-decoder", metavar="FILE", help="the adain baseline's decoder: decoder.pth, or a run folder / checkpoint of gan-style train train/adain.yaml (default models/decoder.pth)")
    make.add_argument("--adain-vgg", metavar="FILE", help="AdaIN's vgg_normalised.pth (default: the one in the --adain-decoder training checkpoint, else models/vgg_normalised.pth)")
    make.add_argument("--gatys-iterations", type=int, default=300, metavar="N", help="L-BFGS iterations of the gatys baseline per photo (default 300)")
    make.add_argument("--question", default="Which one is the better painting of the photo?", help="the study's question")
    make.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    make.add_argument("--seed", type=int, default=0, help="seed of the models' noise, of MUNIT's style and of the tally's bootstrap (default 0)")

    serve = parser.add_argument_group("--serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")

    tally = parser.add_argument_group("--tally")
    tally.add_argument("--votes", action="append", default=[], metavar="FILE", help="more votes, e.g. votes.jsonl downloaded from study.html opened as a file; repeatable")
    tally.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the 95%% intervals (default 1000)")


def run(args: argparse.Namespace) -> int:
    modes = [name for name in ("output", "serve", "tally") if getattr(args, name)]
    if len(modes) != 1:
        raise UserError("compare does one thing at a time: give --output REPORT (make a report), --serve REPORT or --tally REPORT")
    if args.serve:
        from gan_style.evaluation.study import serve

        serve(args.serve, args.host, args.port)
        return 0
    if args.tally:
        return tally(args)
    return make_report(args)


# ---------------------------------------------------------------------------------------------
# Tally
# ---------------------------------------------------------------------------------------------


def tally(args: argparse.Namespace) -> int:
    from gan_style.evaluation import tally as bt
    from gan_style.evaluation.report import load_manifest, method_columns, write_index

    report = Path(args.tally)
    manifest = load_manifest(report)
    columns = method_columns(manifest)
    methods = [column["key"] for column in columns]
    paths = [report / bt.VOTES_FILE] if (report / bt.VOTES_FILE).is_file() else []
    for extra in args.votes:
        if not Path(extra).is_file():
            raise UserError(f"--votes {extra} is not a file; give a votes.jsonl downloaded from the study page")
        paths.append(Path(extra))
    if not paths:
        raise UserError(f"no votes: {report / bt.VOTES_FILE} does not exist; vote in {report / 'study.html'} "
                        f"(served by gan-style compare --serve {report}), or give a downloaded file with --votes FILE")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more resamples, got {args.bootstrap}")
    if len(methods) < 2:
        raise UserError(f"{report} compares {len(methods)} method(s); a ranking needs at least two")
    votes = bt.read_votes(paths, methods, [photo["id"] for photo in manifest["photos"]])
    if not votes:
        raise UserError(f"no votes of this report in {', '.join(map(str, paths))}; vote in {report / 'study.html'} first")
    prior = 1.0
    ranking = bt.rank(methods, votes, bootstrap=args.bootstrap, seed=args.seed, prior=prior)
    record = bt.ranking_record(ranking, len(votes), args.bootstrap, args.seed, prior)
    (report / bt.RANKING_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_index(report, manifest, record)
    print(bt.format_ranking(ranking, {column["key"]: column["label"] for column in columns}, len(votes)))
    print(f"wrote the ranking to {report / 'index.html'} and {report / bt.RANKING_FILE}")
    return 0


# ---------------------------------------------------------------------------------------------
# Making a report
# ---------------------------------------------------------------------------------------------


@dataclass
class Column:
    """One method of the report: how to make its image of a photo, and what it cost."""

    label: str
    kind: str  # "checkpoint", "gatys", "adain"
    path: Path  # the checkpoint, or the style image
    description: str = ""
    cost: dict[str, Any] = field(default_factory=dict)
    used_inputs: set[str] = field(default_factory=set)  # the --with inputs it took


def _parse_columns(args: argparse.Namespace) -> list[Column]:
    columns: list[Column] = []
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or Path(item).exists():  # a path that holds "=" is a path
            label, path = "", item
        if not Path(path).exists():
            raise UserError(f"--checkpoint {path} does not exist; give a run folder, a gan_style .pt or an official .pth file")
        columns.append(Column(label.strip(), "checkpoint", Path(path)))
    for item in args.stylize:
        method, sep, style = item.partition(":")
        if not sep or method not in STYLIZERS:
            raise UserError(f"--stylize expects METHOD:STYLE_IMAGE with METHOD one of {', '.join(STYLIZERS)} (e.g. --stylize gatys:starry.jpg), got {item!r}")
        if not Path(style).is_file():
            raise UserError(f"--stylize {item}: the style image {style} is not a file")
        columns.append(Column(f"{method} ({Path(style).stem})", method, Path(style)))
    if not columns:
        raise UserError("nothing to compare: give --checkpoint RUN (repeat it) and/or --stylize gatys:STYLE.jpg")
    return columns


def _check_folders(args: argparse.Namespace) -> Path:
    from gan_style.evaluation.report import MANIFEST_FILE
    from gan_style.translate import check_output_folder

    for option in ("input", "real"):
        if not getattr(args, option):
            raise UserError(f"making a report needs --{option} (the photos to translate and a folder of real paintings)")
    if not Path(args.real).is_dir():
        raise UserError(f"--real {args.real} is not a folder; give a folder of real target-domain images")
    check_output_folder(args.input, args.output)
    output, real = Path(args.output).resolve(), Path(args.real).resolve()
    if output == real or real in output.parents:
        raise UserError(f"--output {args.output} is inside the --real folder, whose images are the metrics' reference; choose another --output")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_FILE).is_file():
        raise UserError(f"--output {args.output} holds other files; choose a new or empty folder (or a previous report, which is replaced)")
    if args.size < 16:
        raise UserError(f"--size must be at least 16 pixels, got {args.size}")
    if args.max_photos is not None and args.max_photos < 1:
        raise UserError(f"--max-photos must be 1 or more, got {args.max_photos}")
    if args.gatys_iterations < 1:
        raise UserError(f"--gatys-iterations must be 1 or more, got {args.gatys_iterations}")
    return Path(args.output)


def _clear_previous_report(output: Path) -> None:
    """A previous report's images go; its votes are kept aside (they judged the old images)."""
    from gan_style.evaluation.report import MANIFEST_FILE
    from gan_style.evaluation.tally import RANKING_FILE, VOTES_FILE

    if not (output / MANIFEST_FILE).is_file():
        return
    shutil.rmtree(output / "images", ignore_errors=True)
    (output / RANKING_FILE).unlink(missing_ok=True)
    votes = output / VOTES_FILE
    if votes.is_file():
        kept = output / f"votes-before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        votes.rename(kept)
        print(f"replacing the report in {output}; its votes were for the old images: moved to {kept}")


def _load_photos(args: argparse.Namespace) -> list[tuple[str, Image.Image]]:
    """(file name, image shrunk to --size) of each readable photo; unreadable ones are skipped
    with a warning, as translate does."""
    from PIL import Image

    from gan_style.data.images import load_rgb
    from gan_style.translate import collect_inputs

    paths = collect_inputs(args.input)[: args.max_photos]
    root = Path(args.input) if Path(args.input).is_dir() else None
    photos = []
    for path in paths:
        try:
            image = load_rgb(path, min_size=(args.size, args.size))
        except UserError as error:  # DatasetError, ImageTooLargeError
            logger.warning("skipped %s: %s", path, " ".join(str(error).split()))
            continue
        scale = args.size / max(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
        photos.append((str(path.relative_to(root)) if root else path.name, image))
    if not photos:
        raise UserError(f"--input {args.input}: none of the {len(paths)} image(s) could be read")
    return photos


def _inference_inputs(items: list[str] | None) -> dict[str, Any]:
    """``--with texture=painting.jpg --with alpha=0.8`` -> {"texture": <image>, "alpha": 0.8}."""
    from gan_style.data.images import load_rgb
    from gan_style.translate import parse_inference_inputs

    return {name: load_rgb(value) if isinstance(value, Path) else value for name, value in parse_inference_inputs(items).items()}


def _run_dir(checkpoint: Path) -> Path | None:
    if checkpoint.is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def training_speed(run_dir: Path | None) -> tuple[float | None, int]:
    """Seconds per training iteration from the run's TensorBoard logs, and over how many steps.

    The trainer does not store its timing; the wall time of each logged step does. Each event
    file is one training session: the time between its first and last logged steps, over the
    steps between them, leaves out start-up and the gaps between resumed sessions."""
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")) if run_dir is not None else []
    if not files:
        return None, 0
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seconds, steps = 0.0, 0
    for file in files:
        first_seen: dict[int, float] = {}
        try:
            for event in EventFileLoader(str(file)).Load():
                if event.HasField("summary"):
                    first_seen[event.step] = min(event.wall_time, first_seen.get(event.step, event.wall_time))
        except Exception as error:  # a log cut short by a crash still gives its first events
            logger.debug("stopped reading %s: %s", file, error)
        if len(first_seen) >= 2:
            (first_step, first_time), (last_step, last_time) = min(first_seen.items()), max(first_seen.items())
            seconds, steps = seconds + last_time - first_time, steps + last_step - first_step
    return (seconds / steps if steps else None), steps


def _checkpoint_cost(path: Path, step: int | None) -> dict[str, Any]:
    per_iteration, timed = training_speed(_run_dir(path))
    cost: dict[str, Any] = {"steps": step, "sec_per_iteration": per_iteration, "timed_steps": timed}
    if step is None:
        cost["note"] = "an official checkpoint: its training cost is not recorded in the file"
    elif per_iteration is None:
        cost["note"] = "no TensorBoard logs beside the checkpoint: s/iteration unknown"
    return cost


def _to_pil(image01: Any) -> Image.Image:
    from gan_style.data.images import tensor_to_pil

    return tensor_to_pil(image01[0].float().cpu().clamp(0, 1) * 2 - 1)


def _from_pil(image: Image.Image, device: Any) -> Any:
    from gan_style.data.images import pil_to_tensor

    return ((pil_to_tensor(image) + 1) / 2)[None].to(device)


def _translator(column: Column, args: argparse.Namespace, device: Any, extra: dict[str, Any]):
    """The column's photo -> image function (PIL in, PIL out), with its description and cost."""
    if column.kind == "checkpoint":
        import gan_style

        model = gan_style.load(column.path, device=device)
        if args.direction not in model.directions:
            raise UserError(f"--direction {args.direction}: {column.path} ({model.method}) translates {', '.join(model.directions)}")
        accepted = model.inputs(args.direction)
        inputs = {name: value for name, value in extra.items() if name in accepted}
        if "seed" in accepted and "seed" not in inputs:
            inputs["seed"] = args.seed
        missing = [spec.name for spec in model.translator(args.direction).inputs if spec.required and spec.name not in inputs]
        if missing:
            raise UserError(f"--checkpoint {column.path}: this {model.method} model needs the input(s) {', '.join(missing)}: "
                            f"give {' '.join(f'--with {name}=IMAGE' for name in missing)} (used by every model that takes it)")
        column.used_inputs = set(inputs)
        column.label = column.label or model.method
        column.description = model.description
        column.cost = _checkpoint_cost(column.path, model.step)
        return lambda photo: model.translate(photo, args.direction, **inputs)
    if column.kind == "gatys":
        from gan_style.methods.nst.gatys import GatysConfig, stylize_gatys
        from gan_style.nn.vgg import WeightsNotFoundError, load_vgg19

        try:
            vgg = load_vgg19(args.vgg_weights, device=device)
        except (WeightsNotFoundError, ValueError) as error:
            raise UserError(f"--stylize {column.kind}:{column.path} needs VGG-19 weights: give --vgg-weights FILE. {' '.join(str(error).split())}") from None
        style = _from_pil(_load_style(column.path, args.size), device)
        column.description = f"Gatys et al. (CVPR 2016), {args.gatys_iterations} L-BFGS iterations, style {column.path}"
        column.cost = {"note": f"no training; each photo is optimised for {args.gatys_iterations} L-BFGS iterations"}

        def gatys(photo: Image.Image) -> Image.Image:
            config = GatysConfig(size=max(photo.size), iterations=args.gatys_iterations, seed=args.seed)
            return _to_pil(stylize_gatys(vgg, _from_pil(photo, device), [style], config, progress=False).image)

        return gatys
    import torch

    from gan_style.engine.checkpoint import load_run_checkpoint
    from gan_style.methods.nst.adain import AdaINStylizer, load_adain_decoder, training_checkpoint
    from gan_style.nn.vgg import WeightsNotFoundError, load_adain_encoder

    try:
        checkpoint = training_checkpoint(args.adain_decoder)
        encoder = load_adain_encoder(args.adain_vgg or checkpoint, device=device)
        decoder = load_adain_decoder(args.adain_decoder, device=device)
    except (WeightsNotFoundError, ValueError) as error:
        raise UserError(f"--stylize adain:{column.path} needs a trained decoder: give --adain-decoder FILE (and --adain-vgg FILE for a "
                        f"decoder.pth). {' '.join(str(error).split())}") from None
    stylizer = AdaINStylizer(encoder, decoder).eval()
    style = _from_pil(_load_style(column.path, args.size), device)
    column.description = f"AdaIN (Huang and Belongie, ICCV 2017), decoder {args.adain_decoder or 'models/decoder.pth'}, style {column.path}"
    if checkpoint is not None:
        column.cost = _checkpoint_cost(checkpoint, load_run_checkpoint(checkpoint)[1]["progress"]["step"])
    else:
        column.cost = {"note": "a released decoder.pth: its training cost is not recorded in the file"}

    def adain(photo: Image.Image) -> Image.Image:
        with torch.inference_mode():
            return _to_pil(stylizer(_from_pil(photo, device), [style]))

    return adain


def _load_style(path: Path, size: int) -> Image.Image:
    from PIL import Image

    from gan_style.data.images import load_rgb

    image = load_rgb(path)
    scale = size / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS) if scale < 1 else image


def _default_metrics(args: argparse.Namespace) -> list[str]:
    if args.metrics:
        from gan_style.evaluation.metrics import check_metrics

        names = check_metrics(args.metrics.split(","))
        if "speed" in names or "lpips_diversity" in names:
            raise UserError("--metrics: compare times every column itself (the inference s/image column); "
                            "speed and lpips_diversity are metrics of gan-style eval --checkpoint")
        return names
    names = ["swd", "ssim"]
    if args.inception_weights:
        names += ["fid", "kid"]
    if args.vgg_weights:
        names += ["content", "style"]
    return names


def make_report(args: argparse.Namespace) -> int:
    import torch

    from gan_style.evaluation.metrics import evaluate_images
    from gan_style.evaluation.report import MANIFEST_VERSION, SOURCE, save_manifest, unique_keys, write_index
    from gan_style.evaluation.study import write_study
    from gan_style.translate import resolve_device

    columns = _parse_columns(args)
    output = _check_folders(args)
    metrics = _default_metrics(args)
    device = resolve_device(args.device)
    extra = _inference_inputs(args.with_inputs)
    photos = _load_photos(args)
    print(f"comparing {len(columns)} method(s) on {len(photos)} photo(s) at most {args.size} px; metrics {', '.join(metrics)}")
    output.mkdir(parents=True, exist_ok=True)
    _clear_previous_report(output)

    photo_ids = [f"photo_{i:03d}" for i in range(len(photos))]
    outputs: list[list[Image.Image]] = []
    for column in columns:
        translate = _translator(column, args, device, extra)
        images, seconds = [], []
        for _, photo in photos:
            torch.manual_seed(args.seed)  # noise of the methods that draw any: the same for every run
            start = time.perf_counter()
            image = translate(photo)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            images.append(image if image.size == photo.size else image.resize(photo.size))
        column.cost["inference_sec_per_image"] = statistics.median(seconds)
        outputs.append(images)
        print(f"  {column.label}: {column.description} ({statistics.median(seconds):.3g} s/image)")

    unused = set(extra) - set().union(*(column.used_inputs for column in columns))
    if unused:
        logger.warning("no model takes the input(s) %s given with --with; they were not used", ", ".join(sorted(unused)))
    labels = [column.label for column in columns]
    if len(set(labels)) < len(labels):  # the same method twice: name each by its file
        labels = [f"{c.label} ({c.path.name})" if labels.count(c.label) > 1 else c.label for c in columns]
    keys = unique_keys(labels)
    sources = [photo for _, photo in photos]
    entries = [{"key": SOURCE, "label": "source photo", "kind": SOURCE, "description": f"the photos of {args.input}", "images": sources,
                "cost": {}}]
    entries += [{"key": key, "label": label, "kind": column.kind, "description": column.description, "images": images, "cost": column.cost}
                for key, label, column, images in zip(keys, labels, columns, outputs)]
    for entry in entries:
        folder = output / "images" / entry["key"]
        folder.mkdir(parents=True, exist_ok=True)
        print(f"  metrics of {entry['label']} ...")
        entry["metrics"] = evaluate_images(entry["images"], args.real, sources, metrics, inception_weights=args.inception_weights,
                                           vgg_weights=args.vgg_weights, device=device, image_size=args.size, seed=args.seed)
        paths = {}
        for photo_id, image in zip(photo_ids, entry["images"]):
            image.save(folder / f"{photo_id}.png")
            paths[photo_id] = f"images/{entry['key']}/{photo_id}.png"
        entry["images"] = paths

    manifest = {
        "version": MANIFEST_VERSION,
        "created": datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "input": str(args.input),
        "real": str(args.real),
        "output": str(args.output),
        "direction": args.direction,
        "size": args.size,
        "metrics": metrics,
        "question": args.question,
        "photos": [{"id": photo_id, "name": name, "width": image.width, "height": image.height} for photo_id, (name, image) in zip(photo_ids, photos)],
        "columns": entries,
    }
    save_manifest(output, manifest)
    index = write_index(output, manifest)
    write_study(output, manifest)
    print(f"wrote {index} and {output / 'study.html'}; collect votes with gan-style compare --serve {output}, "
          f"then rank with gan-style compare --tally {output}")
    return 0
