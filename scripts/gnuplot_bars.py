"""What the plot scripts (plot-migrate.py, plot-tables.py) share: the gnuplot
preamble of a bar chart with interquartile-range error bars."""


def bar_chart_preamble(out, svg_size, png_size):
    """gnuplot lines that open `out` (.svg, else .png) and set the bar style;
    sizes are "WIDTH,HEIGHT"."""
    return [
        f"set terminal pngcairo size {png_size} font 'sans,11'"
        if out.endswith(".png")
        else f"set terminal svg size {svg_size} dynamic font 'sans,11'",
        f"set output '{out}'",
        "set style data histogram",
        "set style histogram errorbars gap 1 lw 1",
        "set style fill solid 0.6 border -1",
        "set key top left",
        "set grid ytics",
        "set xtics nomirror",
    ]
