"""The closed word list of the synthetic task world.

Short, common, lowercase English words (3 to 8 letters, ``a``-``z`` only, no duplicates). Every
word-based task draws from this list, so a 512-piece tokenizer trained on the world's corpus covers
all of them and the tiny model sees each word often enough to learn its spelling.
"""

from __future__ import annotations

from typing import Dict, Tuple

_TEXT = """
ant arm art bag bat bed bee big box boy bus cab cap car cat cow cup cut day dog dot ear egg elf
end eye fan fig fin fir fox fun gap gas gem gum hat hen hill hip hop hot hug hut ice ink jam jar
jet jog joy key kid kit lab lap leg lid lip log map mat mix mop mud mug net nut oak oil owl pan
pen pet pig pin pit pot rag ram rat red rib rod rug run sad saw sea sip sit sky sun tab tag tan
tap tea ten tie tin tip toe top toy tub van vet wax web wig win yak yam zip zoo
apple baby bake ball band bank barn bead bean bear bell belt bike bird boat bone book boot bowl
bread brick brush cake calm camp card cart cave chair chalk cheek chess chin clay clock cloud
coat coin comb cook corn crab crow cube dance desk dish door dove drum duck dust eagle earth
fairy farm feet fern fish flag flame flute foam fork frog fruit game gate ghost gift goat gold
grape grass green hand harp hawk heart horn horse house jelly juice kite knee lake lamp leaf
lemon light lion lunch mango maple melon milk mint moon moss mouse music nail nest night noodle
ocean olive onion orange otter paint panda paper party pearl piano pillow plant plate plum pond
queen quilt rabbit rain river road robot rock roof rope rose salad salt sand scarf seed shell
ship shoe silk sink skate slide smile snail snake snow sock soup spoon star stone storm sugar
swan table tiger toast tooth towel tower train tree truck tulip turtle uncle valley vase violin
wagon water whale wheat wind window wolf wood yarn yellow zebra
basket blanket bottle bridge butter button candle carrot castle cherry circle cookie dragon
forest garden guitar hammer helmet island jacket kitten ladder letter magnet marble mirror
monkey needle orchid parrot pencil pepper pickle planet pocket potato puzzle rocket saddle
silver spider spring summer sunset ticket tomato tunnel velvet walnut winter wizard
balloon biscuit blossom cabbage compass cupcake dolphin feather giraffe kitchen lantern lettuce
morning octopus panther pumpkin rainbow sandals teacher thunder trumpet unicorn volcano
"""

WORDS: Tuple[str, ...] = tuple(dict.fromkeys(_TEXT.split()))
"""All words, in a fixed order (the order is part of the world's determinism)."""

VOWELS = "aeiou"


def _by_length() -> Dict[int, Tuple[str, ...]]:
  out: Dict[int, list] = {}
  for w in WORDS:
    out.setdefault(len(w), []).append(w)
  return {k: tuple(v) for k, v in sorted(out.items())}


WORDS_BY_LENGTH: Dict[int, Tuple[str, ...]] = _by_length()
"""``length -> words of that length``."""


def words_between(lo: int, hi: int) -> Tuple[str, ...]:
  """Words with ``lo <= len(word) <= hi`` (in ``WORDS`` order)."""
  return tuple(w for w in WORDS if lo <= len(w) <= hi)
