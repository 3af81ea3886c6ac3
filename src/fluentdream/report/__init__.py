"""Report: saved runs (and a mine of dataset examples) -> a static site that opens offline, one
page per target and an index (DESIGN §7, docs/report.md).

    site = fd.report(["results/embedded"], "site",
                     mine=["results/embedded/05_dream_vs_dataset/mining"])
    read_page(site.pages[0])["frontier"]         # what a page shows, as it embeds it
    fluentdream report results/embedded --mine DIR --out site     # the same from the shell

  collect  run directories found, read whole (one being written, unfinished or unreadable is
           left out with its reason) and grouped by target, with their merged frontier
  mined    a mine's examples for a target, scored token by token
  panels   the numbers behind the panels: attribution, logit effects, matched CE, histograms
  pages    the JSON each page embeds
  site     the pages written whole; page.js and page.css are their only script and style,
           written for this project and inlined, so a page makes no request

Imports: runs, data, core, targets, models and the shared modules; never cli.
"""
from .site import Site, read_page, report

__all__ = ["Site", "read_page", "report"]
