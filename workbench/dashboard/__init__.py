"""The dashboard: its layout and launch (``app``, started by ``workbench dashboard`` or the root ``app.py``), kept
apart from its logic so that every callback is a plain function that tests can call: background jobs (``jobs``),
config forms (``forms``), the tab callbacks (``callbacks``), the Learn card's sizing rule (``learn``) and the
command-line options (``arguments``)."""
