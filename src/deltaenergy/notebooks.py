"""Run a parameterised report notebook (papermill) and render it to HTML without its code (nbconvert), in
one process: ``python -m deltaenergy.notebooks NOTEBOOK EXECUTED_IPYNB HTML PARAMETERS_JSON``.

The same as ``papermill NOTEBOOK EXECUTED_IPYNB -y PARAMETERS_JSON && jupyter nbconvert --to html
--no-input EXECUTED_IPYNB``, without the second interpreter and its imports (~1.5 s of each report job).
The HTML is written atomically: a notebook that fails leaves the executed notebook (with the error, for
the log) and no HTML.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .io import atomic_path


def render_notebook(notebook: str | Path, executed: str | Path, html: str | Path, parameters: dict) -> None:
    """Execute ``notebook`` with ``parameters`` into ``executed``, then write its outputs as ``html``."""
    import papermill
    from nbconvert import HTMLExporter

    Path(executed).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, progress_bar=False)
    # nbconvert's --no-input: no code cells and no In/Out prompts
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(executed))
    with atomic_path(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    print(f"{notebook} -> {executed} -> {html}")


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise SystemExit("usage: python -m deltaenergy.notebooks NOTEBOOK EXECUTED_IPYNB HTML PARAMETERS_JSON; "
                         f"got {argv}")
    notebook, executed, html, parameters = argv
    try:
        parameters = json.loads(parameters)
    except json.JSONDecodeError as err:
        raise SystemExit(f"deltaenergy.notebooks: parameters of {notebook} are not JSON ({err}): {parameters!r}")
    render_notebook(notebook, executed, html, parameters)


if __name__ == "__main__":
    main(sys.argv[1:])
