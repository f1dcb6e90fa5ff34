"""Small helpers with no model knowledge: progress bars, image grids, metric writers and the
multi-process set-up."""
