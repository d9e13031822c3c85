"""Execute one of the repository's notebooks through papermill, as a user would."""

import nbformat
import papermill
import yaml


def execute_notebook(repo_root, name, out_dir, **parameters):
    """Run ``notebooks/<name>`` with ``parameters`` in ``out_dir``; the executed copy's path."""
    output = out_dir / name
    papermill.execute_notebook(
        str(repo_root / "notebooks" / name), str(output), parameters=parameters,
        cwd=str(out_dir), progress_bar=False, kernel_name="python3",
    )
    return output


def printed_config(executed) -> dict:
    """The resolved config an executed notebook printed (llcgrok.notebook.show_config)."""
    text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    lines = text[text.index("# resolved config"):].splitlines()
    end = next(i for i, line in enumerate(lines) if " -> " in line)  # "<run_id> -> <run_dir>" follows it
    return yaml.safe_load("\n".join(lines[:end]))
