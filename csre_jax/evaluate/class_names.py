"""Action names of each dataset, so reports and figures say "A58 handshaking", not "57"."""

from csre_jax.data import synthetic

# NTU RGB+D 120's actions A1-A120 in label order; NTU RGB+D 60 is the first 60.
_NTU120 = """\
drink water|eat meal/snack|brushing teeth|brushing hair|drop|pickup|throw|sitting down|
standing up (from sitting position)|clapping|reading|writing|tear up paper|wear jacket|
take off jacket|wear a shoe|take off a shoe|wear on glasses|take off glasses|put on a hat/cap|
take off a hat/cap|cheer up|hand waving|kicking something|reach into pocket|
hopping (one foot jumping)|jump up|make a phone call/answer phone|playing with phone/tablet|
typing on a keyboard|pointing to something with finger|taking a selfie|check time (from watch)|
rub two hands together|nod head/bow|shake head|wipe face|salute|put the palms together|
cross hands in front (say stop)|sneeze/cough|staggering|falling|touch head (headache)|
touch chest (stomachache/heart pain)|touch back (backache)|touch neck (neckache)|
nausea or vomiting condition|use a fan (with hand or paper)/feeling warm|
punching/slapping other person|kicking other person|pushing other person|
pat on back of other person|point finger at the other person|hugging other person|
giving something to other person|touch other person's pocket|handshaking|
walking towards each other|walking apart from each other|put on headphone|take off headphone|
shoot at the basket|bounce ball|tennis bat swing|juggling table tennis balls|hush (quite)|
flick hair|thumb up|thumb down|make ok sign|make victory sign|staple book|counting money|
cutting nails|cutting paper (using scissors)|snapping fingers|open bottle|sniff (smell)|
squat down|toss a coin|fold paper|ball up paper|play magic cube|apply cream on face|
apply cream on hand back|put on bag|take off bag|put something into a bag|
take something out of a bag|open a box|move heavy objects|shake fist|throw up cap/hat|
hands up (both hands)|cross arms|arm circles|arm swings|running on the spot|
butt kicks (kick backward)|cross toe touch|side kick|yawn|stretch oneself|blow nose|
hit other person with something|wield knife towards other person|
knock over other person (hit with body)|grab other person's stuff|
shoot at other person with a gun|step on foot|high-five|cheers and drink|
carry something with other person|take a photo of other person|follow other person|
whisper in other person's ear|exchange things with other person|support somebody with hand|
finger-guessing game (playing rock-paper-scissors)"""
NTU120 = tuple(
    f"A{i} {name}" for i, name in enumerate(_NTU120.replace("|\n", "|").split("|"), start=1)
)
NTU60 = NTU120[:60]

# NW-UCLA's actions a01-a06, a08, a09, a11, a12 (no a07, a10) in label order (label - 1).
UCLA = (
    "pick up with one hand",
    "pick up with two hands",
    "drop trash",
    "walk around",
    "sit down",
    "stand up",
    "donning",
    "doffing",
    "throw",
    "carry",
)

_BY_DATASET = {"ntu60": NTU60, "ntu120": NTU120, "ucla": UCLA, "synthetic": synthetic.CLASS_NAMES}


def numbered(num_classes: int) -> list[str]:
    """The names of labels that nothing names."""
    return [f"class {i}" for i in range(num_classes)]


def class_names(dataset: str | None, num_classes: int) -> list[str]:
    """The dataset's names for labels 0..num_classes-1; NTU by class count when the dataset
    is unknown (e.g. a CTR-GCN pickle), never for custom data (60 classes of one's own are not
    NTU's); "class <i>" when nothing fits."""
    names = _BY_DATASET.get(dataset or "")
    if names is None and dataset != "custom":
        names = {60: NTU60, 120: NTU120}.get(num_classes)
    if names is None or len(names) < num_classes:
        return numbered(num_classes)
    return list(names[:num_classes])
