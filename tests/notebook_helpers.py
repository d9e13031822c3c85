"""Execute one of the repository's notebooks through papermill, as a user would."""

import papermill


def execute_notebook(repo_root, name, out_dir, **parameters):
    """Run ``notebooks/<name>`` with ``parameters`` in ``out_dir``; the executed copy's path."""
    output = out_dir / name
    papermill.execute_notebook(
        str(repo_root / "notebooks" / name), str(output), parameters=parameters,
        cwd=str(out_dir), progress_bar=False, kernel_name="python3",
    )
    return output
