"""``gan-style serve``: a small local web page and HTTP API that translate uploaded photos with
one or more loaded models (``app.create_app``; the command is ``command.run``)."""
