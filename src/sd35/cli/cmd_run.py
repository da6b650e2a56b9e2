"""`sd35 run WORKFLOW.json|IMAGE.png`: run a ComfyUI workflow (API or UI format, or the one embedded in a
PNG written by sd35 or ComfyUI) with sd35's nodes, and print the path of every image it writes.

The whole prompt is validated first: any node error stops the run before anything loads (ComfyUI would
still run the output nodes that validate). A run that fails or is interrupted leaves no images behind.
`control_after_generate` ("randomize" next to a seed) is a frontend action and is not applied: the seed
in the file is the seed used, so re-running a PNG reproduces it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a ComfyUI workflow (.json) or the workflow in a PNG",
        description="Run a ComfyUI workflow file (UI or API format) or the workflow embedded in a PNG, with "
        "sd35's implementation of ComfyUI's nodes. SaveImage writes to --output-dir, PreviewImage to "
        "--output-dir/temp; each file's path is printed. Model files are looked up in ComfyUI's models/ "
        "folder layout (checkpoints/, text_encoders/ or clip/, vae/, diffusion_models/ or unet/).",
    )
    p.add_argument("workflow", type=Path, help="workflow .json (UI or API format) or a .png holding one")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="override an input; NODE is a node id, title or (unique) class type, e.g. --set 6.text='a cat' "
        "--set KSampler.seed=5 (repeatable)",
    )
    p.add_argument(
        "--models",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="models root in ComfyUI's layout (repeatable; default $SD35_MODELS, then the config file's "
        "'models'; see docs/workflows.md)",
    )
    p.add_argument("--comfyui", type=Path, metavar="DIR", help="use an existing ComfyUI install's models/ and input/")
    p.add_argument("--output-dir", type=Path, help="where images go (default ./output; PreviewImage: DIR/temp)")
    p.add_argument("--temp-dir", type=Path, help="where PreviewImage writes (default OUTPUT_DIR/temp)")
    p.add_argument("--input-dir", type=Path, help="LoadImage's folder (default: the ComfyUI install's input/)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="compute dtype; auto: bf16 on GPUs and on CPUs with native bf16, else fp16 / fp32",
    )
    p.add_argument("--no-metadata", action="store_true", help="write PNGs without the prompt/workflow chunks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = run_workflow(args)
    for path in paths:
        print(path)
    if not paths:
        log.warning("the workflow ran but wrote no images")
    sys.stdout.flush()
    return 0


def build_services(args: argparse.Namespace) -> Any:
    """Services from the flags, $SD35_MODELS / $SD35_COMFYUI and the config file."""
    from sd35.nodes import Services, resolve_locations
    from sd35.runtime.devices import DevicePolicy

    locations = resolve_locations(args.models, args.comfyui)
    output_dir = args.output_dir or locations.output_dir or Path("output")
    return Services.create(
        locations,
        output_dir,
        policy=DevicePolicy.create(args.device, args.dtype),
        temp_dir=args.temp_dir,
        input_dir=args.input_dir,
        write_metadata=not args.no_metadata,
    )


class _Progress:
    """Event sink: a tqdm bar per node that reports progress (the samplers), image paths as they appear."""

    def __init__(self, prompt: dict[str, Any], folders: dict[str, Path], quiet: bool) -> None:
        self.prompt, self.folders, self.quiet = prompt, folders, quiet
        self.bars: dict[str, Any] = {}
        self.written: list[Path] = []

    def __call__(self, event: Any) -> None:
        from sd35.workflow import Executed, Progress

        if isinstance(event, Progress) and not self.quiet:
            bar = self.bars.get(event.node)
            if bar is None:
                from tqdm import tqdm

                title = self.prompt.get(event.node, {}).get("class_type", "")
                bar = tqdm(total=event.max, desc=f"#{event.node} {title}", unit="step", dynamic_ncols=True)
                self.bars[event.node] = bar
            bar.total = event.max
            bar.update(event.value - bar.n)
        elif isinstance(event, Executed):
            self.written += image_paths(event.output, self.folders)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_workflow(args: argparse.Namespace, services: Any = None) -> list[Path]:
    """Read, override, validate and execute the workflow; the paths of the images written."""
    from sd35.nodes import build_registry
    from sd35.nodes.workflow_file import Override, apply_overrides, explain_missing_files, read_workflow
    from sd35.workflow import OutputCache, WorkflowValidationError, execute, validate

    services = services or build_services(args)
    registry = build_registry(services)
    overrides = [Override.parse(text) for text in args.overrides]
    wf = apply_overrides(read_workflow(args.workflow, registry), overrides, registry)
    checked = validate(wf.prompt, registry)
    if not checked.ok or checked.node_errors:
        raise WorkflowValidationError(explain_missing_files(checked.to_response(), wf.prompt, services))
    folders = {"output": services.output_dir, "temp": services.temp_dir, "input": services.input_dir}
    sink = _Progress(wf.prompt, folders, args.quiet)
    extra = {"extra_pnginfo": {"workflow": wf.workflow}} if wf.workflow is not None else {}
    try:
        execute(wf.prompt, registry, cache=OutputCache(), events=sink, extra=extra)
    except BaseException:
        remove_files(sink.written)  # a run that does not finish leaves no images
        raise
    finally:
        sink.close()
    return sink.written


def remove_files(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def image_paths(output: dict[str, Any], folders: dict[str, Path]) -> list[Path]:
    """Files named by a UI dict {"images": [{"filename", "subfolder", "type"}]}."""
    out = []
    for item in output.get("images", []):
        base = folders.get(item.get("type", "output"))
        if base is not None:
            out.append(base / item.get("subfolder", "") / item["filename"])
    return out
