"""Gather free-licence Latin fonts from Debian (bookworm) packages for the synthetic word renderer.

    python tools/gather_fonts.py [--output data/gpu/fonts] [--cache /tmp/textrec-fonts] [--charset CHARS]

Steps: `apt-get download` each package of PACKAGES into CACHE/debs (kept between runs), `dpkg -x` it into
CACHE/unpacked/NAME (never into /), check that it is in Debian main and that its copyright file names the
licence recorded here, then look at every .ttf/.otf/.ttc face in it. A face is kept when it is not a
symbol/math font, its cmap covers the whole charset, its lower case has ascenders (capitals or small capitals
for lower case would give wrong labels with a case-sensitive charset), and it is not a duplicate (same family + subfamily,
same file, or the same drawing of the charset as a face kept before). Kept faces are cut down to the charset
with fontTools' subsetter (kerning and other default OpenType features kept, hinting dropped) and checked
in Pillow, the way the renderer will load them.

Output: OUTPUT/<package>__<file stem>.ttf|.otf and OUTPUT/fonts.tsv (file, package, licence, family,
subfamily, style tags). Font files of an earlier run for the same packages that this run did not write are
removed. The only network use is `apt-get download` from the Debian archive configured in apt (run
`apt-get update` once first on a fresh machine). See docs/fonts.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import statistics
import string
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textrec.synth.fonts import missing_glyphs  # noqa: E402  (the renderer's own "can it draw this?" test)

DEFAULT_CHARSET = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")  # 95 characters
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
STYLE_TAGS = ("serif", "sans", "slab", "mono", "display", "handwriting", "bold", "italic", "condensed")


@dataclass(frozen=True)
class Package:
    name: str
    licence: str  # of the font files, as the package's debian/copyright gives it
    styles: tuple[str, ...] = ()  # tags every face of the package gets (names and OS/2 add more)
    only: tuple[str, ...] = ()  # file-name globs; empty: every font file
    skip: tuple[str, ...] = ()  # file-name globs of faces left out after a look at them (unreadable, caps only)
    limit: int | None = None  # most faces kept, spread evenly over the sorted candidates


# Debian bookworm packages. Licences were read from each package's /usr/share/doc/NAME/copyright.
# Left out on purpose: fonts-croscore and fonts-arkpandora (the same designs as Liberation and DejaVu),
# fonts-freefont-otf and fonts-liberation (other builds of packages listed), fonts-povray (licence of the
# font files unclear); after a look at contact sheets: fonts-humor-sans (capitals only), fonts-triod-postnaja
# and fonts-joscelyn (Latin letters that read as others). Limits keep families with many near-identical cuts from crowding out the rest, and the total
# under 20 MB. Not in bookworm: fonts-ibm-plex, fonts-crimson, fonts-montserrat,
# fonts-atkinson-hyperlegible, fonts-alegreya-sans.
NOTO_LATIN = ("NotoSans-*", "NotoSerif-*", "NotoSansDisplay-*", "NotoSerifDisplay-*", "NotoSansMono-*")
# Faces of fonts-aenigma that pass the checks but a reader would misread (boxed, hatched, pictures, capitals
# only, letters that look like others): found on a contact sheet of all its faces.
AENIGMA_UNREADABLE = tuple(f"{stem}.ttf" for stem in (
    "bandwdth bitbttf dystorqu encapsul entangle entlayrb falsepos falsposr fauxsnow fbsbltc2 gosebmp2 gosebmps "
    "grapple grudge2 knot lineding lowdown lynx mima4x4i mima4x4o mobilize nucleus overhead pindown sclnmaze sequence "
    "setbackt snailets spaciouo spacious techniqo techniqu vertigo weaver whatever wyvernwi wyvernww").split())
PACKAGES: tuple[Package, ...] = (
    # Big text families: serif, sans and mono in many weights and widths.
    Package("fonts-noto-core", "OFL-1.1", only=NOTO_LATIN),
    Package("fonts-noto-extra", "OFL-1.1", only=NOTO_LATIN, limit=48),
    Package("fonts-noto-mono", "OFL-1.1", ("mono",)),
    Package("fonts-urw-base35", "AGPL-3 with font exception"),
    Package("fonts-texgyre", "GUST Font License"),
    Package("fonts-liberation2", "OFL-1.1"),
    Package("fonts-dejavu-core", "Bitstream-Vera"),
    Package("fonts-dejavu-extra", "Bitstream-Vera"),
    Package("fonts-freefont-ttf", "GPL-3+ with font exception"),
    Package("fonts-paratype", "ParaType Free Font License"),
    Package("fonts-go", "BSD-3-clause"),
    Package("fonts-lmodern", "GUST Font License", only=("lm*.otf",), limit=12),
    Package("fonts-cmu", "OFL-1.1", limit=12),
    Package("fonts-johnsmith-induni", "GPL-2+", limit=6),  # Times/Helvetica/Courier clones
    Package("fonts-wine", "LGPL-2.1+"),
    Package("fonts-linex", "GPL-2+", skip=("alfa-beta*", "elle*")),  # those draw Greek for Latin
    Package("fonts-uralic", "GPL-2", limit=6),  # older cuts of the URW designs
    Package("fonts-mph-2b-damase", "public-domain"),
    Package("fonts-georgewilliams", "OFL-1.1 or BSD-3-clause"),
    # Serif.
    Package("fonts-crosextra-caladea", "OFL-1.1", ("serif",)),
    Package("fonts-linuxlibertine", "GPL-2+ with font exception or OFL-1.1"),
    Package("fonts-ebgaramond", "OFL-1.1", ("serif",)),
    Package("fonts-sil-gentiumplus", "OFL-1.1", ("serif",)),
    Package("fonts-sil-charis", "OFL-1.1", ("serif",)),
    Package("fonts-sil-doulos", "OFL-1.1", ("serif",)),
    Package("fonts-junicode", "OFL-1.1", ("serif",), limit=8),
    Package("fonts-cardo", "OFL-1.1", ("serif",)),
    Package("fonts-stix", "OFL-1.1", ("serif",), only=("STIXGeneral*",)),  # the rest are math/size variants
    Package("fonts-oldstandard", "OFL-1.0", ("serif",)),
    Package("fonts-vollkorn", "OFL-1.1", ("serif",), limit=8),
    Package("fonts-goudybookletter", "public-domain", ("serif",)),
    Package("fonts-fanwood", "MIT", ("serif",)),
    Package("fonts-lindenhill", "MIT", ("serif",)),
    Package("fonts-yrsa-rasa", "OFL-1.1", ("serif",), only=("Yrsa-*",), limit=6),  # Rasa is Yrsa plus Gujarati
    Package("fonts-quattrocento", "OFL-1.1", ("serif",)),
    Package("fonts-century-catalogue", "OFL-1.0", ("serif",)),
    Package("fonts-levien-museum", "OFL-1.0", ("serif",)),
    Package("fonts-prociono", "public-domain", ("serif",)),
    Package("fonts-arapey", "OFL-1.1", ("serif",)),
    Package("fonts-elstob", "OFL-1.1", ("serif",), limit=8),
    Package("fonts-essays1743", "OFL-1.1 or LGPL-2.1", ("serif",)),
    Package("fonts-averia-serif-gwf", "OFL-1.1", ("serif",)),
    Package("fonts-averia-gwf", "OFL-1.1"),
    Package("fonts-adf-accanthis", "GPL-2+ with font exception", ("serif",)),
    Package("fonts-adf-baskervald", "GPL-2+ with font exception", ("serif",)),
    Package("fonts-adf-berenis", "GPL-2+ with font exception", ("sans",)),
    Package("fonts-adf-gillius", "GPL-2+ with font exception", ("sans",), limit=10),
    Package("fonts-adf-ikarius", "GPL-2+ with font exception"),
    Package("fonts-adf-irianis", "GPL-2+ with font exception", ("sans",)),
    Package("fonts-adf-libris", "GPL-2+ with font exception", ("sans",)),
    Package("fonts-adf-mekanus", "GPL-2+ with font exception", ("display",)),
    Package("fonts-adf-oldania", "GPL-2+ with font exception", ("serif",)),
    Package("fonts-adf-romande", "GPL-2+ with font exception", ("serif",)),
    Package("fonts-adf-solothurn", "GPL-2+ with font exception", ("display",)),
    Package("fonts-adf-switzera", "GPL-2+ with font exception", ("sans",), limit=12),
    Package("fonts-adf-tribun", "GPL-2+ with font exception", ("serif",)),
    Package("fonts-adf-universalis", "GPL-2+ with font exception", ("sans",)),
    Package("fonts-adf-verana", "GPL-2+ with font exception", ("sans",)),
    # Slab.
    Package("fonts-roboto-slab", "Apache-2.0", ("slab",)),
    # Sans.
    Package("fonts-crosextra-carlito", "OFL-1.1", ("sans",)),
    Package("fonts-roboto-unhinted", "Apache-2.0", ("sans",), limit=12),
    Package("fonts-open-sans", "Apache-2.0", ("sans",)),
    Package("fonts-lato", "OFL-1.1", ("sans",), limit=10),
    Package("fonts-sil-andika", "OFL-1.1", ("sans",)),
    Package("fonts-cantarell", "OFL-1.1", ("sans",)),
    Package("fonts-cabin", "OFL-1.1", ("sans",)),
    Package("fonts-averia-sans-gwf", "OFL-1.1", ("sans",)),
    Package("fonts-inter", "OFL-1.1", ("sans",), limit=10),
    Package("fonts-karla", "OFL-1.1", ("sans",)),
    Package("fonts-karmilla", "OFL-1.1", ("sans",)),
    Package("fonts-manrope", "OFL-1.1", ("sans",)),
    Package("fonts-sora", "OFL-1.1", ("sans",)),
    Package("fonts-dosis", "OFL-1.1", ("sans",)),
    Package("fonts-junction", "OFL-1.1", ("sans",)),
    Package("fonts-jura", "OFL-1.1", ("sans",)),
    Package("fonts-quicksand", "OFL-1.1", ("sans",)),
    Package("fonts-comfortaa", "OFL-1.1", ("sans",)),
    Package("fonts-league-spartan", "OFL-1.1", ("sans",)),
    Package("fonts-play", "OFL-1.1", ("sans",), only=("Play-*",)),
    Package("fonts-oxygen", "GPL-3+ with font exception or OFL-1.1", ("sans",)),
    Package("fonts-tuffy", "public-domain", ("sans",)),
    Package("fonts-eurofurence", "OFL-1.1", ("sans",)),
    Package("fonts-clear-sans", "Apache-2.0", ("sans",)),
    Package("fonts-b612", "OFL-1.1 and EPL-2.0 and EDL-1.0", ("sans",)),
    Package("fonts-lemonada", "OFL-1.1", ("sans",)),
    Package("fonts-mplus", "OFL-1.1", ("sans",), limit=10),
    # Signs, roads, labels: the lettering of scene text.
    Package("fonts-roadgeek", "MIT", ("sans",)),
    Package("fonts-national-park", "OFL-1.1", ("sans",)),
    Package("fonts-allerta", "OFL-1.1", ("sans",)),
    Package("fonts-tiresias", "GPL-3+ with font exception", ("sans",), limit=8),
    Package("fonts-opendin", "OFL-1.1", ("sans",)),
    Package("fonts-routed-gothic", "OFL-1.1", ("sans",)),
    Package("fonts-osifont", "GPL-3 with font exception", ("sans",)),
    Package("fonts-beteckna", "GPL-3", ("sans",)),
    Package("fonts-millimetre", "OFL-1.1", ("sans",)),
    Package("fonts-yanone-kaffeesatz", "OFL-1.1", ("sans", "condensed")),
    Package("fonts-bebas-neue", "OFL-1.1", ("sans", "condensed", "display")),
    Package("fonts-smiley-sans", "OFL-1.1", ("sans", "condensed")),
    Package("fonts-opendyslexic", "CC-BY-3.0 and Bitstream-Vera", ("sans",), limit=4),
    # Thai fonts whose Latin is Courier-like: slab serifs, which Debian has few of.
    Package("fonts-tlwg-mono-ttf", "GPL-2+ with font exception", ("slab", "mono")),
    Package("fonts-tlwg-typewriter-ttf", "GPL-2+ with font exception", ("slab", "mono")),
    Package("fonts-tlwg-typo-ttf", "GPL-2+ with font exception", ("slab", "mono")),
    Package("fonts-ocr-a", "public-domain", ("mono",)),
    Package("fonts-ocr-b", "public-domain", ("mono",)),
    # Monospace (code, typewriter, terminals).
    Package("fonts-firacode", "OFL-1.1", ("sans", "mono")),
    Package("fonts-hack", "MIT and Bitstream-Vera", ("sans", "mono")),
    Package("fonts-inconsolata", "OFL-1.0", ("sans", "mono")),
    Package("fonts-jetbrains-mono", "Apache-2.0", ("sans", "mono"), limit=6),
    Package("fonts-courier-prime", "OFL-1.1", ("slab", "mono")),
    Package("fonts-hermit", "OFL-1.1", ("sans", "mono")),
    Package("fonts-anonymous-pro", "OFL-1.1", ("mono",)),
    Package("fonts-agave", "MIT", ("sans", "mono")),
    Package("fonts-3270", "BSD-3-clause or OFL-1.1", ("mono",)),
    Package("fonts-league-mono", "OFL-1.1", ("sans", "mono"), limit=8),
    Package("fonts-mononoki", "OFL-1.1", ("mono",)),
    Package("fonts-monoid", "MIT or OFL-1.1", ("sans", "mono"), limit=3),
    Package("fonts-fantasque-sans", "OFL-1.1", ("sans", "mono"), limit=8),
    Package("fonts-monofur", "OFL-1.1", ("mono",)),
    Package("fonts-gnutypewriter", "OFL-1.1", ("mono",)),
    Package("fonts-glasstty", "Unlicense", ("mono",)),
    Package("fonts-sixtyfour", "OFL-1.1", ("mono", "display")),
    Package("fonts-amiga", "OFL-1.1", ("mono", "display")),
    Package("fonts-pc", "CC-BY-SA-4.0", ("mono", "display")),
    Package("fonts-unifont", "GPL-2+", ("mono",)),
    # Display: blackletter, decorative, titling, segment displays.
    Package("fonts-blankenburg", "OFL-1.1", ("display",)),
    Package("fonts-gamaliel", "OFL-1.1", ("display",)),
    Package("fonts-gotico-antiqua", "OFL-1.1", ("display",)),
    Package("fonts-klaudia-berenika", "OFL-1.1", ("display",)),
    Package("fonts-solide-mirage", "OFL-1.1", ("serif", "display")),
    Package("fonts-compagnon", "OFL-1.1", ("display",)),
    Package("fonts-le-murmure", "OFL-1.1", ("display",)),
    Package("fonts-train", "OFL-1.1", ("display",)),
    Package("fonts-rampart", "OFL-1.1", ("display",)),
    Package("fonts-cherrybomb", "OFL-1.1", ("display",)),
    Package("fonts-ferrite-core", "OFL-1.1", ("display",)),
    Package("fonts-fantasma", "CC0-1.0", ("display",)),
    Package("fonts-engadget", "LGPL-2+", ("display",)),
    Package("fonts-f500", "Artistic", ("display",)),
    Package("fonts-radisnoir", "OFL-1.1", ("display",)),
    Package("fonts-bajaderka", "OFL-1.1", ("display",)),
    Package("fonts-apropal", "OFL-1.1", ("sans", "display")),
    Package("fonts-okolaks", "OFL-1.1", ("sans", "display")),
    Package("fonts-stick", "OFL-1.1", ("display",)),
    Package("fonts-cabinsketch", "OFL-1.1", ("display",), limit=1),  # 120 KB a face
    Package("fonts-staypuft", "LGPL-2+", ("display",)),
    Package("fonts-dseg", "OFL-1.1", ("display",)),
    Package("fonts-aenigma", "Brian-Kent-permission", ("display",), limit=40, skip=AENIGMA_UNREADABLE),
    Package("fonts-dustin", "GPL-2+"),
    # Handwriting and scripts.
    Package("fonts-comic-neue", "OFL-1.1", ("handwriting",)),
    Package("fonts-lobster", "OFL-1.1", ("display", "handwriting")),
    Package("fonts-lobstertwo", "OFL-1.1", ("display", "handwriting")),
    Package("fonts-dancingscript", "OFL-1.1", ("handwriting",)),
    Package("fonts-kaushanscript", "OFL-1.1", ("handwriting",)),
    Package("fonts-leckerli-one", "OFL-1.1", ("display", "handwriting")),
    Package("fonts-kristi", "OFL-1.1", ("handwriting",)),
    Package("fonts-dkg-handwriting", "GPL-3+", ("handwriting",)),
    Package("fonts-isabella", "LGPL-2+", ("handwriting",)),
    Package("fonts-breip", "OFL-1.0", ("handwriting",)),
    Package("fonts-sjfonts", "GPL-2 with font exception", ("handwriting",)),
    Package("fonts-bwht", "OFL-1.1", ("handwriting",)),
    Package("fonts-femkeklaver", "CC-BY-SA-3.0", ("handwriting",)),
    Package("fonts-rufscript", "GPL-3+ with font exception", ("handwriting",)),
    Package("fonts-tomsontalks", "OFL-1.1", ("handwriting",)),
    Package("fonts-ecolier-court", "OFL-1.1", ("handwriting",)),
    Package("fonts-summersby", "GPL-2+", ("handwriting",)),
    Package("fonts-levien-typoscript", "OFL-1.0", ("handwriting",)),
    Package("fonts-havana", "OFL-1.1", ("handwriting",)),
)

# What a package's copyright file must say for the licence recorded above (keyed by its first word):
# a cheap guard against a later package version that changed licence.
LICENCE_PROOF = {
    "OFL": r"Open Font License|\bOFL\b",
    "GPL": r"General Public License|\bGPL",
    "AGPL": r"Affero|\bAGPL",
    "LGPL": r"Lesser General Public|Library General Public|\bLGPL",
    "Apache": r"Apache",
    "Bitstream": r"Bitstream",
    "GUST": r"GUST",
    "MIT": r"\bMIT\b|Expat|Permission is hereby granted",
    "BSD": r"\bBSD|Redistribution and use",
    "public": r"public.domain",
    "CC": r"Creative Commons|\bCC-BY",
    "CC0": r"\bCC0",
    "ParaType": r"ParaType",
    "Artistic": r"Artistic",
    "Unlicense": r"Unlicense|unencumbered",
    "Brian": r"redistribute any of my fonts",
}

# Name keywords -> style tags. Checked in order; the first letterform match (serif/sans/slab) wins, so
# "Sans Serif" is sans. Family names cover the mixed packages (URW, TeX Gyre, Libertine, Go, ...).
LETTERFORM_WORDS = (
    ("slab", r"slab|courier|cursor|typewriter|nimbus ?mono|liberation mono|free ?mono|\bgo mono|clarendon|egypt"),
    ("sans", r"sans|grotesk|gothic|heros|adventor|biolinum|nimbus ?sans|\bgo\b(?! mono)|arial|helvet|verdana"),
    ("serif", r"serif|roman|antiqua|bookman|c059|p052|bonum|pagella|schola|termes|libertine|century|garamond|times|\bpt serif"),
)
GENRE_WORDS = (
    ("mono", r"\bmono|\bcode\b|typewriter|courier|cursor|console|terminal|\bfixed"),
    ("handwriting", r"script|\bhand|chancery|z003|chorus|brush|marker|cursive|calligraph"),
    ("display", r"titling|poster|stencil|outline|shadow|inline|decor|blackletter|fraktur"),
)
BOLD_WORDS = r"bold|black|heavy|ultra|fett"
ITALIC_WORDS = r"italic|oblique|slant|kursiv|cursive"
CONDENSED_WORDS = r"condensed|narrow|compressed|\bcond\b"
# Names that mean pictures, not letters (their Latin code points draw symbols).
SYMBOL_WORDS = r"symbol|dingbat|emoji|ornament|icons?\b|webding|wingding|\bmath|d050000l|marlett|logo|keyboard"
# Names of small-capital faces: their lower case draws capitals, a wrong label for a case-sensitive charset.
SMALL_CAPS_WORDS = r"small ?caps|\bcaps\b|\bsc\b|smcp|capitals|\bcapit|unicase"
PROBE_TEXT = "Hello, World!"


@dataclass
class Candidate:
    """A face that passed the cheap checks (names, cmap, duplicates), before subsetting."""

    package: Package
    path: Path
    index: int  # face number in a .ttc, else 0
    family: str
    subfamily: str

    @property
    def out_name(self) -> str:
        stem = self.path.stem if not self.path.suffix.lower() == ".ttc" else f"{self.path.stem}-{self.index}"
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem)
        return f"{self.package.name}__{stem}"


@dataclass
class Kept:
    file: str
    package: str
    licence: str
    family: str
    subfamily: str
    tags: list[str]
    size: int


@dataclass
class Report:
    """Per-package counts, for the summary."""

    kept: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=lambda: defaultdict(Counter))  # package -> reason -> count
    failed: dict = field(default_factory=dict)  # package -> why


# ---------------------------------------------------------------- packages: download, unpack, licence


def download(packages: list[Package], debs: Path) -> dict[str, Path]:
    """The .deb of each package, fetched with `apt-get download` unless already in `debs`."""
    debs.mkdir(parents=True, exist_ok=True)

    def cached(name: str) -> Path | None:
        found = sorted(debs.glob(f"{name}_*.deb"))
        return found[-1] if found else None

    missing = [p.name for p in packages if cached(p.name) is None]
    if missing:
        # One call for all is fast; if any name fails apt refuses the lot, so then go one by one.
        if subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True).returncode != 0:
            for name in missing:
                if cached(name) is None:
                    subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True)
    return {p.name: deb for p in packages if (deb := cached(p.name)) is not None}


def unpack(deb: Path, root: Path) -> Path:
    """`dpkg -x` the package into root/NAME (reused while the .deb is the same)."""
    target = root / deb.name.split("_")[0]
    marker = target / ".unpacked-from"
    if marker.exists() and marker.read_text() == deb.name:
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True, capture_output=True)
    marker.write_text(deb.name)
    return target


def licence_problem(package: Package, deb: Path, tree: Path) -> str | None:
    """Why the package is not taken as free under its recorded licence, or None."""
    section = subprocess.run(["dpkg-deb", "-f", str(deb), "Section"], capture_output=True, text=True).stdout.strip()
    if section.startswith(("non-free", "contrib")):
        return f"section {section} is not Debian main"
    copyright_file = tree / "usr" / "share" / "doc" / package.name / "copyright"
    if not copyright_file.is_file():
        return "no copyright file"
    key = re.split(r"[- ]", package.licence)[0]
    if not re.search(LICENCE_PROOF[key], copyright_file.read_text(errors="replace"), re.IGNORECASE):
        return f"copyright file does not mention {package.licence}"
    return None


# ---------------------------------------------------------------- faces: find, inspect, pick


def font_files(tree: Path, only: tuple[str, ...], skip: tuple[str, ...]) -> list[Path]:
    """Font files in an unpacked package, sorted. Symlinks are skipped: in a `dpkg -x` tree an absolute link
    points into this machine's /, and a relative one to a file that is found anyway."""
    files = []
    for dirpath, _dirs, names in os.walk(tree):
        for name in names:
            path = Path(dirpath) / name
            if not name.lower().endswith(FONT_SUFFIXES) or path.is_symlink():
                continue
            if only and not any(fnmatch.fnmatch(name, pattern) for pattern in only):
                continue
            if any(fnmatch.fnmatch(name, pattern) for pattern in skip):
                continue
            files.append(path)
    return sorted(files, key=lambda p: p.name)


def face_count(path: Path) -> int:
    if path.suffix.lower() != ".ttc":
        return 1
    from fontTools.ttLib import TTCollection

    with TTCollection(str(path), lazy=True) as collection:
        return len(collection.fonts)


def names_of(font) -> tuple[str, str]:
    """(family, subfamily): the typographic names (IDs 16/17) when present, else the legacy ones (1/2)."""
    name = font["name"]
    family = name.getDebugName(16) or name.getDebugName(1) or ""
    subfamily = name.getDebugName(17) or name.getDebugName(2) or ""
    return family.strip(), subfamily.strip()


def cheap_skip_reason(font, path: Path, family: str, subfamily: str, charset: str) -> str | None:
    """Why a face is no use before any drawing: symbols, variable font, missing characters, small caps."""
    label = f"{path.name} {family} {subfamily}".lower()
    if re.search(SYMBOL_WORDS, label):
        return "symbol/math font"
    cmap_table = font["cmap"]
    if all(t.platformID == 3 and t.platEncID == 0 for t in cmap_table.tables):
        return "symbol font (symbol cmap)"
    if "OS/2" in font and font["OS/2"].panose.bFamilyType == 5:
        return "symbol font (panose pictorial)"
    if "fvar" in font:
        return "variable font (only static faces are taken)"
    cmap = font.getBestCmap() or {}
    if any(ord(c) not in cmap for c in charset if not c.isspace()) or (" " in charset and 32 not in cmap):
        return "cmap lacks charset characters"
    if re.search(SMALL_CAPS_WORDS, label):
        return "small caps (by name)"
    if "CFF2" in font:
        return "CFF2 outlines (Pillow/FreeType builds vary)"
    return None


def spread_order(items: list) -> list:
    """The items reordered so that every prefix is spread evenly over the list (van der Corput order).

    Sorted file names group a family's weights and widths, so the first N of this order sample all of them;
    taking faces in this order until a package's limit is reached keeps the spread when some faces fail."""
    bits = max(1, (len(items) - 1).bit_length())
    order = (int(format(k, f"0{bits}b")[::-1], 2) for k in range(1 << bits))
    return [items[i] for i in order if i < len(items)]


def candidates(package: Package, tree: Path, charset: str, seen_names: set, seen_files: set, report: Report) -> list[Candidate]:
    """Faces of one package that pass the cheap checks and are not duplicates of faces already taken."""
    from fontTools.ttLib import TTFont

    found = []
    for path in font_files(tree, package.only, package.skip):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen_files:
            report.skipped[package.name]["duplicate file"] += 1
            continue
        seen_files.add(digest)
        try:
            count = face_count(path)
        except Exception as exc:  # a broken file must not stop the run
            print(f"  skip {path.name}: cannot open ({exc})")
            report.skipped[package.name]["bad file"] += 1
            continue
        for index in range(count):
            try:
                with TTFont(str(path), fontNumber=index, lazy=True) as font:
                    family, subfamily = names_of(font)
                    reason = cheap_skip_reason(font, path, family, subfamily, charset)
            except Exception as exc:
                print(f"  skip {path.name}#{index}: cannot read ({exc})")
                report.skipped[package.name]["bad file"] += 1
                continue
            key = (family.lower(), subfamily.lower())
            if reason is None and key in seen_names:
                reason = "duplicate family+subfamily"
            if reason:
                report.skipped[package.name][reason] += 1
                continue
            seen_names.add(key)
            found.append(Candidate(package, path, index, family, subfamily))
    return found


# ---------------------------------------------------------------- subset, check, tag


def subset_face(candidate: Candidate, out_name: str, charset: str, output: Path) -> Path:
    """Cut the face down to the charset; returns the written file (.otf for CFF outlines, else .ttf)."""
    from fontTools import subset

    options = subset.Options()
    options.hinting = False  # FreeType's autohinter does well enough at 24-52 px, and hints are big
    options.name_IDs = ["*"]  # keep copyright and licence names (IDs 0, 13, 14)
    options.notdef_outline = True
    options.font_number = candidate.index
    options.drop_tables += ["DSIG", "gasp"]  # gasp only steers hinting; some old files have one fontTools cannot read
    font = subset.load_font(str(candidate.path), options)
    try:
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=[ord(c) for c in charset])
        subsetter.subset(font)
        suffix = ".otf" if "CFF " in font else ".ttf"
        path = output / (out_name + suffix)
        subset.save_font(font, str(path), options)
    finally:
        font.close()
    return path


def drawn(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    """`text` drawn white on black, cropped to its box."""
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(image).text((-left, -top), text, font=font, fill=255)
    return image


def lacks_ascenders(font: ImageFont.FreeTypeFont) -> bool:
    """Whether b, d, h, k and l stand no taller than x: the face draws capitals or small capitals (or boxes) for
    lower case, a wrong label for a case-sensitive charset. Normal faces measure 1.16 or more, those 1.10 or less."""
    def height(char: str) -> int:
        _left, top, _right, bottom = font.getbbox(char)
        return bottom - top

    return statistics.median(height(c) for c in "bdhkl") < 1.12 * height("x")


def pillow_problem(path: Path, charset: str) -> tuple[str | None, bytes]:
    """Why Pillow cannot use the file as the renderer will, or None; and a digest of how it draws the charset."""
    font = ImageFont.truetype(str(path), 32)
    image = Image.new("L", (40 * len(PROBE_TEXT), 80))
    ImageDraw.Draw(image).text((10, 10), PROBE_TEXT, font=font, fill=255)
    if image.getbbox() is None:
        return f"draws nothing for {PROBE_TEXT!r}", b""
    if missing_glyphs(font, charset):
        return "draws no glyph for some charset characters", b""
    # Only matters where the charset tells lower case from capitals.
    if set("bdhklxBDHKLX") <= set(charset) and lacks_ascenders(ImageFont.truetype(str(path), 96)):
        return "caps or small caps only", b""
    sample = drawn(font, charset)
    return None, hashlib.sha256(repr(sample.size).encode() + sample.tobytes()).digest()


def style_tags(path: Path, candidate: Candidate, charset: str) -> list[str]:
    """Style tags from the names, OS/2 (weight, width, panose, fsSelection), post, and the package's own tags."""
    from fontTools.ttLib import TTFont

    label = f"{candidate.family} {candidate.subfamily} {candidate.path.stem}".lower()
    tags = set(candidate.package.styles)
    with TTFont(str(path)) as font:
        os2 = font["OS/2"] if "OS/2" in font else None
        panose = os2.panose if os2 else None
        weight = os2.usWeightClass if os2 else 400
        width = os2.usWidthClass if os2 else 5
        italic_flag = bool(os2.fsSelection & 1) if os2 else False
        italic_angle = font["post"].italicAngle if "post" in font else 0
        fixed = bool(font["post"].isFixedPitch) if "post" in font else False
        cmap = font.getBestCmap() or {}
        advances = {font["hmtx"][cmap[ord(c)]][0] for c in charset if ord(c) in cmap and c != " "} if "hmtx" in font else set()

    # Letterform: the face's own name first ("Courier Prime Sans"), then the package's tag, then PANOSE.
    named = next((tag for tag, words in LETTERFORM_WORDS if re.search(words, label)), None)
    if named:
        tags -= {"serif", "sans", "slab"}
        tags.add(named)
    elif not tags & {"serif", "sans", "slab"} and panose and panose.bFamilyType == 2 and panose.bSerifStyle:
        # PANOSE serif styles: 2-10 serifed (6 = square, i.e. slab), 11-15 sans (incl. flared, rounded).
        tags.add("slab" if panose.bSerifStyle == 6 else "serif" if panose.bSerifStyle <= 10 else "sans")
    for tag, words in GENRE_WORDS:
        if re.search(words, label):
            tags.add(tag)
    if panose and panose.bFamilyType == 3:
        tags.add("handwriting")
    if panose and panose.bFamilyType == 4:
        tags.add("display")
    if fixed or len(advances) == 1 or (panose and panose.bFamilyType == 2 and panose.bProportion == 9):
        tags.add("mono")
    if weight >= 600 or re.search(BOLD_WORDS, label):
        tags.add("bold")
    if italic_flag or italic_angle != 0 or re.search(ITALIC_WORDS, label):
        tags.add("italic")
    if width <= 4 or re.search(CONDENSED_WORDS, label):
        tags.add("condensed")
    return [t for t in STYLE_TAGS if t in tags]


# ---------------------------------------------------------------- output


def write_tsv(kept: list[Kept], path: Path) -> None:
    lines = ["file\tpackage\tlicence\tfamily\tsubfamily\tstyles"]
    for k in sorted(kept, key=lambda k: k.file):
        clean = [s.replace("\t", " ") for s in (k.file, k.package, k.licence, k.family, k.subfamily)]
        lines.append("\t".join(clean + [",".join(k.tags)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def remove_stale(output: Path, written: set[str], packages: list[Package]) -> int:
    """Delete font files of an earlier run for these packages (named PACKAGE__...) that this run did not write."""
    names = {p.name for p in packages}
    stale = [p for p in output.iterdir()
             if p.name.split("__")[0] in names and p.suffix in (".ttf", ".otf") and p.name not in written]
    for p in stale:
        p.unlink()
    return len(stale)


def print_summary(kept: list[Kept], report: Report, packages: list[Package], output: Path) -> None:
    print("\nfonts kept per package:")
    for package in packages:
        skipped = report.skipped.get(package.name, {})
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        status = f"FAILED: {report.failed[package.name]}" if package.name in report.failed else f"{report.kept[package.name]:4d}"
        print(f"  {package.name:28s} {status}" + (f"   (skipped: {why})" if why else ""))
    styles = Counter(tag for k in kept for tag in k.tags)
    print("style tags: " + ", ".join(f"{tag} {styles[tag]}" for tag in STYLE_TAGS))
    total = sum(k.size for k in kept)
    print(f"total: {len(kept)} fonts from {sum(1 for n in report.kept.values() if n)} packages, "
          f"{total / 1e6:.2f} MB in {output}")
    if report.failed:
        print(f"packages that failed: {', '.join(sorted(report.failed))}")
    if others := [p.name for p in output.iterdir() if p.suffix.lower() in FONT_SUFFIXES and "__" not in p.name]:
        print(f"note: {len(others)} font files in {output} were not written by this script (e.g. {others[0]})")


# ---------------------------------------------------------------- main


def require_fonttools() -> None:
    try:
        import fontTools  # noqa: F401
    except ImportError:
        sys.exit(f"fontTools is missing: install it with `{sys.executable} -m pip install fonttools`, then run this again")


def gather(packages: list[Package], cache: Path, output: Path, charset: str, limits: bool = True) -> tuple[list[Kept], Report]:
    report = Report()
    debs = download(packages, cache / "debs")
    output.mkdir(parents=True, exist_ok=True)
    seen_names: set = set()
    seen_files: set = set()
    seen_drawings: set = set()
    out_names: set = set()
    kept: list[Kept] = []
    for package in packages:
        if package.name not in debs:
            report.failed[package.name] = "apt-get download failed (not in the archive? apt-get update not run?)"
            print(f"{package.name}: download failed")
            continue
        try:
            tree = unpack(debs[package.name], cache / "unpacked")
        except subprocess.CalledProcessError as exc:
            report.failed[package.name] = f"dpkg -x failed ({exc.stderr.decode(errors='replace').strip()[:100]})"
            continue
        if problem := licence_problem(package, debs[package.name], tree):
            report.failed[package.name] = problem
            print(f"{package.name}: skipped, {problem}")
            continue
        found = candidates(package, tree, charset, seen_names, seen_files, report)
        limit = package.limit if limits else None
        tried = 0
        for candidate in spread_order(found):
            if limit is not None and report.kept[package.name] >= limit:
                break
            tried += 1
            out_name = candidate.out_name
            while out_name in out_names:  # two files of one package with the same stem
                out_name += "_"
            out_names.add(out_name)
            try:
                path = subset_face(candidate, out_name, charset, output)
                problem, drawing = pillow_problem(path, charset)
            except Exception as exc:  # one bad font must not stop the run
                print(f"  skip {candidate.path.name}#{candidate.index}: {type(exc).__name__}: {exc}")
                report.skipped[package.name]["bad file"] += 1
                for stale in output.glob(out_name + ".*"):
                    stale.unlink()
                continue
            if problem is None and drawing in seen_drawings:
                problem = "draws like a face already kept"
            if problem:
                path.unlink()
                report.skipped[package.name][problem] += 1
                continue
            seen_drawings.add(drawing)
            tags = style_tags(path, candidate, charset)
            kept.append(Kept(path.name, package.name, package.licence, candidate.family, candidate.subfamily, tags,
                             path.stat().st_size))
            report.kept[package.name] += 1
        if tried < len(found):
            report.skipped[package.name][f"not needed (limit {limit})"] += len(found) - tried
        print(f"{package.name}: {report.kept[package.name]} kept")
    return kept, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("data/gpu/fonts"), help="folder for the fonts and fonts.tsv")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/textrec-fonts"), help="holds debs/ and unpacked/ (reused)")
    parser.add_argument("--charset", default=DEFAULT_CHARSET, help="characters every font must draw; the subsets keep only these "
                        "(default: the 95 printable ASCII characters with the space)")
    parser.add_argument("--packages", nargs="*", help="only these packages of the built-in list (for a trial run into "
                        "another --output: fonts.tsv then lists only them)")
    parser.add_argument("--no-limits", action="store_true", help="ignore the per-package limits (to review every face)")
    parser.add_argument("--max-mb", type=float, default=20.0, help="warn when the fonts take more than this")
    args = parser.parse_args()

    require_fonttools()
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # its notes on timestamps and dropped tables are noise here
    charset = "".join(dict.fromkeys(args.charset))
    packages = [p for p in PACKAGES if not args.packages or p.name in args.packages]
    if args.packages and (unknown := set(args.packages) - {p.name for p in packages}):
        sys.exit(f"not in the package list: {', '.join(sorted(unknown))}")

    kept, report = gather(packages, args.cache, args.output, charset, limits=not args.no_limits)
    removed = remove_stale(args.output, {k.file for k in kept}, packages)
    write_tsv(kept, args.output / "fonts.tsv")
    if removed:
        print(f"removed {removed} font files of an earlier run")
    print_summary(kept, report, packages, args.output)
    if sum(k.size for k in kept) > args.max_mb * 1e6:
        print(f"warning: more than {args.max_mb} MB; lower some package limits")


if __name__ == "__main__":
    main()
