"""The devtools UI: `patchbay serve` over lab and sim run directories (and the results server
`patchbay-serve` builds on it). `runs` reads run directories, `server` serves them with a
static UI from `static/` (plain HTML, CSS and JS modules: no build step)."""
