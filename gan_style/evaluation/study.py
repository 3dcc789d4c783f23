"""The two-up preference study of a compare report: ``study.html`` and the server that keeps votes.

The page shows two outputs for the same photo, in random order and on random sides, without
saying which method made which, and asks which is better: left, right or can't tell (buttons,
or the keys ArrowLeft / 1, ArrowRight / 2, ArrowDown / 0). It is plain HTML and JavaScript with
its data inline, so it works opened as a file (votes stay in the page, to download as
votes.jsonl) and served by ``gan-style compare --serve REPORT`` (each vote is POSTed to
``/votes`` and appended to REPORT/votes.jsonl).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gan_style.evaluation.report import STUDY_FILE, load_manifest, method_columns
from gan_style.evaluation.tally import VOTES_FILE, parse_vote

logger = logging.getLogger(__name__)

MAX_VOTE_BYTES = 4096


def study_data(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the page needs: the photos with their source image, and each method's images."""
    source = next(column for column in manifest["columns"] if column["kind"] == "source")
    return {
        "question": manifest.get("question", "Which one is the better painting of the photo?"),
        "photos": [{"id": p["id"], "name": p["name"], "source": source["images"].get(p["id"])} for p in manifest["photos"]],
        "methods": [{"key": c["key"], "images": c["images"]} for c in method_columns(manifest)],
    }


def render_study(manifest: Mapping[str, Any]) -> str:
    # In a <script> element only "</" (and "<!--") can end it early: escape every "<".
    data = json.dumps(study_data(manifest), ensure_ascii=False).replace("<", "\\u003c")
    return _PAGE.replace("__STUDY_DATA__", data)


def write_study(report_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = report_dir / STUDY_FILE
    path.write_text(render_study(manifest), encoding="utf-8")
    return path


def make_app(report_dir: str | Path):
    """A Starlette app that serves the report folder and appends each POSTed vote to votes.jsonl."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    report_dir = Path(report_dir)
    manifest = load_manifest(report_dir)
    methods = [column["key"] for column in method_columns(manifest)]
    photos = [photo["id"] for photo in manifest["photos"]]
    votes_path = report_dir / VOTES_FILE
    lock = threading.Lock()  # one writer at a time: lines never interleave

    async def post_vote(request: Request) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > MAX_VOTE_BYTES:
            return JSONResponse({"error": "a vote is a small JSON object"}, status_code=413)
        body = await request.body()
        try:
            vote = parse_vote(json.loads(body[: MAX_VOTE_BYTES + 1]), methods, photos)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        record = {**vote.__dict__, "received": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with lock:
            with votes_path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            count = sum(1 for line in votes_path.open(encoding="utf-8") if line.strip())
        return JSONResponse({"saved": True, "votes": count})

    return Starlette(routes=[Route("/votes", post_vote, methods=["POST"]), Mount("/", StaticFiles(directory=report_dir, html=True))])


def serve(report_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    import socket

    import uvicorn

    from gan_style.errors import UserError

    app = make_app(report_dir)
    try:  # uvicorn would only log a failed bind and exit; say which option to change
        with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as error:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); choose another --port") from None
    print(f"serving {report_dir}: open http://{host}:{port}/{STUDY_FILE} (votes go to {Path(report_dir) / VOTES_FILE}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Which is better? (preference study)</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; color: #222; text-align: center; }
#photo img { width: 160px; height: auto; }
.two-up { display: flex; gap: 2em; justify-content: center; margin: 1em 0; }
.two-up figure { margin: 0; }
.two-up img { width: min(40vw, 320px); height: auto; display: block; border: 1px solid #ccc; cursor: pointer; }
button { font-size: 1.05em; padding: 0.4em 1.2em; margin: 0.5em; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 0.3em; font-size: 0.9em; }
.muted { color: #666; font-size: 0.9em; }
</style></head>
<body>
<h1>Which is better?</h1>
<p id="question"></p>
<div id="trial">
  <figure id="photo"><img id="source-image" alt="the photo"><figcaption class="muted">the photo</figcaption></figure>
  <div class="two-up">
    <figure><img id="left-image" alt="left"><button id="vote-left" type="button">Left <kbd>&larr;</kbd> <kbd>1</kbd></button></figure>
    <figure><img id="right-image" alt="right"><button id="vote-right" type="button">Right <kbd>&rarr;</kbd> <kbd>2</kbd></button></figure>
  </div>
  <button id="vote-tie" type="button">Can't tell <kbd>&darr;</kbd> <kbd>0</kbd></button>
</div>
<p id="done" hidden>All pairs judged &mdash; thank you.</p>
<p id="progress"></p>
<p id="status" class="muted"></p>
<p><a id="download" download="votes.jsonl" href="#">download votes.jsonl</a></p>
<p class="muted">Keys: <kbd>&larr;</kbd> or <kbd>1</kbd> left, <kbd>&rarr;</kbd> or <kbd>2</kbd> right,
<kbd>&darr;</kbd> or <kbd>0</kbd> can't tell. The methods are not named; sides and order are random.</p>
<script type="application/json" id="study-data">__STUDY_DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("study-data").textContent);
  var served = location.protocol === "http:" || location.protocol === "https:";
  var params = new URLSearchParams(location.search);

  function randomWord() {
    var word = new Uint32Array(1);
    crypto.getRandomValues(word);
    return word[0];
  }
  function hex(word) { return ("00000000" + word.toString(16)).slice(-8); }

  // Marsaglia's xorshift32: a seeded order (?seed=N) can be replayed.
  var seed = params.has("seed") ? (parseInt(params.get("seed"), 10) >>> 0) : randomWord();
  var state = seed || 1;
  function random() {
    state ^= state << 13; state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5; state >>>= 0;
    return state / 4294967296;
  }

  var voter;
  try {  // the same browser keeps its voter id; file:// pages may have no storage
    voter = localStorage.getItem("gan_style_voter") || hex(randomWord());
    localStorage.setItem("gan_style_voter", voter);
  } catch (error) { voter = hex(randomWord()); }
  var session = hex(randomWord()) + hex(randomWord());

  var pairs = [];
  data.photos.forEach(function (photo) {
    for (var i = 0; i < data.methods.length; i++) {
      for (var j = i + 1; j < data.methods.length; j++) {
        var a = data.methods[i], b = data.methods[j];
        if (a.images[photo.id] && b.images[photo.id]) pairs.push({photo: photo, a: a, b: b});
      }
    }
  });
  for (var k = pairs.length - 1; k > 0; k--) {  // Fisher-Yates shuffle
    var r = Math.floor(random() * (k + 1));
    var t = pairs[k]; pairs[k] = pairs[r]; pairs[r] = t;
  }
  pairs = pairs.map(function (p) {
    var swap = random() < 0.5;
    return {photo: p.photo, left: swap ? p.b : p.a, right: swap ? p.a : p.b};
  });

  var index = 0, votes = [], saved = 0, failed = 0, downloadUrl = null;
  var el = function (id) { return document.getElementById(id); };
  el("question").textContent = data.question;

  function show() {
    if (index >= pairs.length) {
      el("trial").hidden = true;
      el("done").hidden = false;
      el("progress").textContent = pairs.length + " of " + pairs.length + " pairs judged";
      return;
    }
    var pair = pairs[index];
    el("source-image").src = pair.photo.source;
    el("left-image").src = pair.left.images[pair.photo.id];
    el("right-image").src = pair.right.images[pair.photo.id];
    el("progress").textContent = "pair " + (index + 1) + " of " + pairs.length;
  }

  function updateDownload() {
    if (downloadUrl) URL.revokeObjectURL(downloadUrl);
    var lines = votes.map(function (v) { return JSON.stringify(v) + "\n"; });
    downloadUrl = URL.createObjectURL(new Blob(lines, {type: "application/x-ndjson"}));
    el("download").href = downloadUrl;
    el("download").textContent = "download votes.jsonl (" + votes.length + " vote" + (votes.length === 1 ? "" : "s") + " of this page)";
  }

  function report() {
    if (!served) {
      el("status").textContent = "Opened as a file: the votes stay in this page. Download votes.jsonl before closing it, then run "
        + "gan-style compare --tally REPORT --votes votes.jsonl (or serve the report: gan-style compare --serve REPORT).";
    } else if (failed) {
      el("status").textContent = failed + " vote(s) not saved by the server: download votes.jsonl to keep them.";
    } else {
      el("status").textContent = saved + " vote(s) saved to votes.jsonl on the server.";
    }
  }

  function post(record) {
    fetch("votes", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(record)})
      .then(function (response) { if (!response.ok) throw new Error(response.status); saved += 1; })
      .catch(function () { failed += 1; })
      .then(report);
  }

  function vote(choice) {
    if (index >= pairs.length) return;
    var pair = pairs[index];
    var record = {photo: pair.photo.id, left: pair.left.key, right: pair.right.key, choice: choice,
                  time: new Date().toISOString(), session: session, voter: voter};
    votes.push(record);
    updateDownload();
    if (served) post(record);
    index += 1;
    show();
  }

  el("vote-left").addEventListener("click", function () { vote("left"); });
  el("vote-right").addEventListener("click", function () { vote("right"); });
  el("left-image").addEventListener("click", function () { vote("left"); });
  el("right-image").addEventListener("click", function () { vote("right"); });
  el("vote-tie").addEventListener("click", function () { vote("tie"); });
  var keys = {ArrowLeft: "left", "1": "left", ArrowRight: "right", "2": "right", ArrowDown: "tie", "0": "tie"};
  document.addEventListener("keydown", function (event) {
    var choice = keys[event.key];
    if (!choice || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();  // the arrows would scroll
    vote(choice);
  });

  window.study = {pairs: pairs, votes: votes, served: served, seed: seed,
                  get index() { return index; }, get saved() { return saved; }, get failed() { return failed; }};
  updateDownload();
  report();
  show();
})();
</script>
</body></html>
"""
