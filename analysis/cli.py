"""The command lines of `analyze-area-vs-number` and `vae-subitize`: settings from analysis.config,
checked before torch is imported."""
from __future__ import annotations

import importlib

from analysis.config import AnalysisConfig, ReadoutConfig
from common.cli import add_version, out_folder_problem, run
from common.errors import UsageError
from common.settings import Parser, add_options, from_args


def _main(prog: str, description: str, settings, work: str, argv) -> int:
    """Parse and check the settings, then import and call `work` ("module:function") with them."""
    parser = Parser(prog=prog, description=description)
    add_version(parser, prog)
    add_options(parser, settings)
    given = vars(parser.parse_args(argv))

    def body():
        from synthgen.manifest import inside_set_problem

        config = from_args(settings, given)
        problem = out_folder_problem(config.out) or inside_set_problem(config.out)
        if problem:
            raise UsageError(problem)
        module, function = work.split(":")
        getattr(importlib.import_module(module), function)(config)

    return run(prog, body, memory_hint="lower --batch-size (the images encoded at once), or free memory")


def analyze_main(argv=None) -> int:
    return _main("analyze-area-vs-number", "Find latent dimensions that code numerosity independently of cumulative "
                 "area, and the reverse (Eq. 3 of the paper).", AnalysisConfig, "analysis.area_vs_number:analyse",
                 argv)


def subitize_main(argv=None) -> int:
    return _main("vae-subitize", "Train and evaluate the paper's subitizing readout on frozen VAE latents (Table 1).",
                 ReadoutConfig, "analysis.readout:run", argv)
