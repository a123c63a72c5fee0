"""Large, valid signature databases for the load-time tests and benchmarks.

`lines(n)` makes n `label`/`sig` pairs that p0f accepts (no line covers a
later one): specific lines with distinct MSS and window pairs over a few
option layouts, IP versions and TTLs; every tenth a generic line with an
MSS-multiple window; some `%N` windows and `*` MSS.  That is the shape of
a site's own additions, only many more of them.
"""

from __future__ import annotations

from pathlib import Path

HEAD = "classes = win,unix,other\n\n[tcp:request]\n"
_LAYOUTS = ("mss,sok,ts,nop,ws", "mss,nop,ws,nop,nop,sok", "mss,nop,ws,nop,nop,ts,sok,eol+1", "mss",
            "mss,nop,nop,sok", "mss,nop,ws,sok,ts")
_GENERIC_LAYOUTS = ("mss,nop,nop,ts,nop,ws", "mss,ts,nop,ws", "mss,nop,ws,ts", "nop,nop,ts,mss",
                    "mss,sok,ts", "ws,mss,nop", "mss,ws,nop,nop,ts", "sok,mss")
_MOD_LAYOUT = "nop,mss,ws"


def lines(n: int) -> list[str]:
    out = []
    specific = generic = mod = 0
    for i in range(n):
        if i % 10 == 0:  # generic: unique (layout, N, wscale)
            g = generic
            generic += 1
            layout = _GENERIC_LAYOUTS[g % len(_GENERIC_LAYOUTS)]
            rest = g // len(_GENERIC_LAYOUTS)
            out.append(f"label = g:unix:Gen{g % 97}:x\n")
            out.append(f"sig = *:64:0:*:mss*{1 + rest % 1000},{rest // 1000 % 15}:{layout}:df,id+:0\n")
        elif i % 10 == 5:  # '*' MSS and a %N window: unique (N, wscale)
            m = mod
            mod += 1
            out.append(f"label = s:win:Mod{m % 89}:x\n")
            out.append(f"sig = *:128:0:*:%{2 + m % 60000},{m // 60000 % 15}:{_MOD_LAYOUT}::0\n")
        else:  # specific: unique (MSS, window) per line
            s = specific
            specific += 1
            ver = "6" if s % 7 == 0 else "4"
            quirks = "" if ver == "6" else "df,id+"
            out.append(f"label = s:unix:Spec{s % 101}:{s % 13}\n")
            out.append(f"sig = {ver}:{64 if s % 3 else 128}:0:{536 + s % 1000}:{s // 1000 % 65536},"
                       f"{s % 15}:{_LAYOUTS[s % len(_LAYOUTS)]}:{quirks}:0\n")
    return out


def text(n: int) -> str:
    return HEAD + "".join(lines(n))


def write(path: Path, n: int) -> Path:
    path.write_text(text(n))
    return path
