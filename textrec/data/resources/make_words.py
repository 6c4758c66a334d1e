"""Regenerate textrec/data/resources/en_words.tsv.gz (run with wordfreq==3.1.1 installed)."""
import gzip, re, sys
import wordfreq

WORD = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
# Slurs and profanity are left out: the list also feeds the preview pictures shown in the docs.
BLOCK_STEMS = ("fuck", "shit", "cunt", "nigg", "fagg", "whore", "slut", "pussy", "asshole", "bitch", "dildo", "wank", "twat", "retard")
BLOCK_WORDS = {"fag", "fags", "dick", "dicks", "cock", "cocks", "porn", "porno", "rape", "raped", "rapist", "rapists", "tits", "cum", "nazi", "nazis", "kike", "spic", "chink", "coon", "dyke", "tranny", "bastard", "bastards", "piss", "pissed", "crap", "damn", "hell", "sex", "sexy", "ass", "arse", "boobs", "penis", "vagina", "anal", "orgasm", "horny", "nude", "naked", "milf", "hooker", "hookers", "hoe", "hoes", "jizz", "semen", "scum", "homo", "negro"}

out = []
for w in wordfreq.top_n_list("en", 80000):
    if not WORD.match(w) or len(w) > 25:
        continue
    if w in BLOCK_WORDS or any(s in w for s in BLOCK_STEMS):
        continue
    out.append(f"{w}\t{wordfreq.zipf_frequency(w, 'en'):.2f}\n")
    if len(out) == 50000:
        break
data = "".join(out).encode("utf-8")
with open(sys.argv[1], "wb") as handle:
    handle.write(gzip.compress(data, compresslevel=9, mtime=0))
print(len(out))
