"""`theseus dashboard`: a local web app that shows every run at a glance, live.

`runs` finds the runs (folders under the output roots, and submitted runs from the records) and
reads what the list shows; `files` reads a run's files on this machine or over its host's shell;
`series` turns `metrics.jsonl` into downsampled curves; `details` the rest of a run's page;
`server` is the Starlette app and its uvicorn server; `static/` the pages, their scripts, and the
vendored charting library (uPlot, fetched by scripts/vendor_dashboard_js.sh).
"""
