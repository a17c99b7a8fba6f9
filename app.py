"""LoRA Workbench dashboard, from a checkout: ``python app.py [--host 127.0.0.1] [--port 7860] [--runs runs]
[--data-dir ../shared/data]`` (what ``make run`` calls). Installed, the same is ``workbench dashboard``.

The dashboard lives in ``workbench/dashboard/app.py``; this file only starts it.
"""

from workbench.dashboard.app import build_app, launch, main  # noqa: F401  (build_app, launch: for old imports)

if __name__ == "__main__":
    main()
