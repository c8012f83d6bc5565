#!/usr/bin/env python3
"""Write SYNTHETIC scored self-generations for the croco demo.

Reads  data/prompts/demo.jsonl
Writes data/demo/scored_generations.jsonl

This is a stand-in for real model self-generations plus reward-model scores
(real generation comes later). Every prompt gets 8 responses (sample_idx 0..7)
assembled from short per-language sentence pieces. Each response has a latent
"quality" in [0, 1); low-quality responses (quality < 0.6) get defects (repeated words,
shuffled word order, truncation, a sentence in another language), and

    reward = 2.0 * quality - 1.0 + N(0, 0.3)      (rounded to 4 decimals)

To exercise edge cases, exactly 3 fixed rows carry "reward": null and two fixed
pools contain an exact reward tie between two responses.

Standard library only; deterministic (fixed seed). Run from the repo root:

    python3 tools/demo/make_scored_generations.py
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

SEED = 20260526
SAMPLES_PER_PROMPT = 8
IN_PATH = Path("data/prompts/demo.jsonl")
OUT_PATH = Path("data/demo/scored_generations.jsonl")

# (prompt line index in demo.jsonl, sample_idx) whose reward is written as null.
NULL_ROWS = {(7, 4), (150, 0), (301, 7)}
# (prompt line index, sample_idx that copies the reward, sample_idx copied from):
# an exact reward tie inside that pool.
TIE_ROWS = [(12, 5, 2), (200, 6, 1)]


def prompt_id(language: str, prompt: str) -> str:
    """Stable id of one (language, prompt) pair.

    First 16 lowercase hex characters of sha256 over the UTF-8 bytes of
    ``language + "\\x1f" + prompt.strip()``. croco computes the same id, so
    rows written here join with the prompts croco loads.
    """
    data = (language + "\x1f" + prompt.strip()).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


# Per-language sentence pieces. Index 0 is an opener, index 8 a closer,
# indices 1..7 are body sentences.
PIECES: dict[str, list[str]] = {
    "en": [
        "Here is a short answer to your question.",
        "First, it helps to start with the basics.",
        "Take your time and go one step at a time.",
        "Many people find that a simple plan works best.",
        "It is also a good idea to ask others for advice.",
        "Small daily habits make a big difference over time.",
        "Try to keep things clear and practical.",
        "In short, the most important thing is to be consistent.",
        "I hope this helps, and good luck!",
    ],
    "da": [
        "Her er et kort svar på dit spørgsmål.",
        "Først er det en god idé at starte med det grundlæggende.",
        "Tag dig god tid, og tag ét skridt ad gangen.",
        "Mange oplever, at en enkel plan fungerer bedst.",
        "Det er også en god idé at spørge andre til råds.",
        "Små daglige vaner gør en stor forskel over tid.",
        "Prøv at holde det klart og praktisk.",
        "Kort sagt er det vigtigste at være konsekvent.",
        "Jeg håber, det hjælper, og held og lykke!",
    ],
    "nl": [
        "Hier is een kort antwoord op je vraag.",
        "Om te beginnen helpt het om met de basis te starten.",
        "Neem de tijd en doe het stap voor stap.",
        "Veel mensen merken dat een eenvoudig plan het beste werkt.",
        "Het is ook een goed idee om anderen om advies te vragen.",
        "Kleine dagelijkse gewoonten maken op den duur een groot verschil.",
        "Probeer het duidelijk en praktisch te houden.",
        "Kortom, het belangrijkste is om consequent te zijn.",
        "Ik hoop dat dit helpt, en veel succes!",
    ],
    "fr": [
        "Voici une réponse courte à ta question.",
        "D'abord, il est utile de commencer par les bases.",
        "Prends ton temps et avance étape par étape.",
        "Beaucoup de gens trouvent qu'un plan simple fonctionne le mieux.",
        "C'est aussi une bonne idée de demander conseil à d'autres personnes.",
        "De petites habitudes quotidiennes font une grande différence avec le temps.",
        "Essaie de rester clair et pratique.",
        "En bref, le plus important est d'être régulier.",
        "J'espère que cela t'aidera, et bonne chance !",
    ],
    "de": [
        "Hier ist eine kurze Antwort auf deine Frage.",
        "Zuerst hilft es, mit den Grundlagen anzufangen.",
        "Lass dir Zeit und geh Schritt für Schritt vor.",
        "Viele Menschen finden, dass ein einfacher Plan am besten funktioniert.",
        "Es ist auch eine gute Idee, andere um Rat zu fragen.",
        "Kleine tägliche Gewohnheiten machen mit der Zeit einen großen Unterschied.",
        "Versuche, alles klar und praktisch zu halten.",
        "Kurz gesagt: Das Wichtigste ist, dranzubleiben.",
        "Ich hoffe, das hilft dir, und viel Erfolg!",
    ],
    "it": [
        "Ecco una breve risposta alla tua domanda.",
        "Per prima cosa, è utile partire dalle basi.",
        "Prenditi il tuo tempo e procedi un passo alla volta.",
        "Molte persone trovano che un piano semplice funzioni meglio.",
        "È anche una buona idea chiedere consiglio ad altri.",
        "Piccole abitudini quotidiane fanno una grande differenza nel tempo.",
        "Cerca di mantenere le cose chiare e pratiche.",
        "In breve, la cosa più importante è essere costanti.",
        "Spero che ti sia utile, e buona fortuna!",
    ],
    "es": [
        "Aquí tienes una respuesta breve a tu pregunta.",
        "Primero, conviene empezar por lo básico.",
        "Tómate tu tiempo y avanza paso a paso.",
        "Mucha gente descubre que un plan sencillo funciona mejor.",
        "También es buena idea pedir consejo a otras personas.",
        "Los pequeños hábitos diarios marcan una gran diferencia con el tiempo.",
        "Intenta que todo sea claro y práctico.",
        "En resumen, lo más importante es ser constante.",
        "Espero que te sirva, ¡y mucha suerte!",
    ],
    "gl": [
        "Aquí tes unha resposta breve á túa pregunta.",
        "Primeiro, convén comezar polo básico.",
        "Tómate o teu tempo e avanza paso a paso.",
        "Moita xente descobre que un plan sinxelo funciona mellor.",
        "Tamén é boa idea pedirlles consello a outras persoas.",
        "Os pequenos hábitos diarios marcan unha gran diferenza co tempo.",
        "Intenta que todo sexa claro e práctico.",
        "En resumo, o máis importante é ser constante.",
        "Espero que che sirva, e moita sorte!",
    ],
    "ga": [
        "Seo freagra gearr ar do cheist.",
        "Ar dtús, cabhraíonn sé tosú leis na bunrudaí.",
        "Glac do chuid ama agus déan é céim ar chéim.",
        "Feictear do go leor daoine gurb é plean simplí is fearr.",
        "Is smaoineamh maith é freisin comhairle a iarraidh ar dhaoine eile.",
        "Déanann nósanna beaga laethúla difríocht mhór le himeacht ama.",
        "Déan iarracht rudaí a choinneáil soiléir agus praiticiúil.",
        "Go hachomair, is é an rud is tábhachtaí ná a bheith seasmhach.",
        "Tá súil agam go gcabhraíonn sé seo, agus go n-éirí leat!",
    ],
    "mt": [
        "Din hija tweġiba qasira għall-mistoqsija tiegħek.",
        "L-ewwel nett, jgħin li tibda mill-bażi.",
        "Ħu l-ħin tiegħek u mxi pass pass.",
        "Ħafna nies isibu li pjan sempliċi jaħdem l-aħjar.",
        "Hija wkoll idea tajba li titlob parir lil ħaddieħor.",
        "Drawwiet żgħar ta' kuljum jagħmlu differenza kbira maż-żmien.",
        "Ipprova żomm l-affarijiet ċari u prattiċi.",
        "Fil-qosor, l-iktar ħaġa importanti hija li tkun konsistenti.",
        "Nittama li dan jgħin, u xorti tajba!",
    ],
    "cy": [
        "Dyma ateb byr i'ch cwestiwn.",
        "Yn gyntaf, mae'n help dechrau gyda'r pethau sylfaenol.",
        "Cymerwch eich amser a chymryd un cam ar y tro.",
        "Mae llawer o bobl yn gweld mai cynllun syml sy'n gweithio orau.",
        "Mae hefyd yn syniad da gofyn i eraill am gyngor.",
        "Mae arferion bach bob dydd yn gwneud gwahaniaeth mawr dros amser.",
        "Ceisiwch gadw pethau'n glir ac yn ymarferol.",
        "Yn fyr, y peth pwysicaf yw bod yn gyson.",
        "Gobeithio bod hyn yn helpu, a phob lwc!",
    ],
    "fi": [
        "Tässä on lyhyt vastaus kysymykseesi.",
        "Aluksi kannattaa aloittaa perusasioista.",
        "Ota aikaa ja etene askel kerrallaan.",
        "Monet huomaavat, että yksinkertainen suunnitelma toimii parhaiten.",
        "On myös hyvä idea kysyä neuvoa muilta.",
        "Pienet päivittäiset tavat tekevät ajan mittaan suuren eron.",
        "Yritä pitää asiat selkeinä ja käytännöllisinä.",
        "Lyhyesti sanottuna tärkeintä on johdonmukaisuus.",
        "Toivottavasti tästä on apua, ja onnea matkaan!",
    ],
    "nb": [
        "Her er et kort svar på spørsmålet ditt.",
        "Først er det lurt å begynne med det grunnleggende.",
        "Ta deg god tid og ta ett steg om gangen.",
        "Mange opplever at en enkel plan fungerer best.",
        "Det er også lurt å spørre andre om råd.",
        "Små daglige vaner utgjør en stor forskjell over tid.",
        "Prøv å holde ting tydelig og praktisk.",
        "Kort sagt er det viktigste å være konsekvent.",
        "Jeg håper dette hjelper, og lykke til!",
    ],
    "pt": [
        "Aqui tens uma resposta curta à tua pergunta.",
        "Primeiro, ajuda começar pelo básico.",
        "Vai com calma e avança passo a passo.",
        "Muitas pessoas descobrem que um plano simples funciona melhor.",
        "Também é boa ideia pedir conselhos a outras pessoas.",
        "Pequenos hábitos diários fazem uma grande diferença com o tempo.",
        "Tenta manter as coisas claras e práticas.",
        "Em suma, o mais importante é ser consistente.",
        "Espero que isto ajude, e boa sorte!",
    ],
    "sv": [
        "Här är ett kort svar på din fråga.",
        "Först är det bra att börja med grunderna.",
        "Ta god tid på dig och ta ett steg i taget.",
        "Många märker att en enkel plan fungerar bäst.",
        "Det är också en bra idé att be andra om råd.",
        "Små dagliga vanor gör stor skillnad över tid.",
        "Försök att hålla det tydligt och praktiskt.",
        "Kort sagt är det viktigaste att vara konsekvent.",
        "Jag hoppas att det hjälper, och lycka till!",
    ],
}
LANGS = list(PIECES)


def make_response(rng: random.Random, lang: str, quality: float) -> str:
    """Assemble one response; the lower the quality, the more defects."""
    pieces = PIECES[lang]
    body = pieces[1:8]
    n_body = 1 + int(quality * 4) + rng.randint(0, 1)  # 1..5 body sentences
    sents = [pieces[0]] + rng.sample(body, min(n_body, len(body)))
    if quality > 0.35 or rng.random() < 0.5:
        sents.append(pieces[8])

    # Defects: each applies with a probability that grows as quality falls.
    # Responses with quality >= 0.6 stay clean.
    badness = max(0.0, 1.0 - quality / 0.6)
    if rng.random() < badness * 0.6:  # a sentence in another language
        other = rng.choice([l for l in LANGS if l != lang])
        sents.insert(rng.randint(1, len(sents)), rng.choice(PIECES[other][1:8]))
    if rng.random() < badness * 0.6:  # shuffled word order in one sentence
        i = rng.randrange(len(sents))
        words = sents[i].split()
        rng.shuffle(words)
        sents[i] = " ".join(words)
    text = " ".join(sents)
    if rng.random() < badness * 0.6:  # a word repeated several times
        words = text.split()
        i = rng.randrange(len(words))
        words[i:i + 1] = [words[i]] * rng.randint(3, 6)
        text = " ".join(words)
    if rng.random() < badness * 0.5:  # truncated mid-sentence
        cut = rng.randint(max(10, len(text) // 3), max(11, (2 * len(text)) // 3))
        text = text[:cut].rstrip()
    return text


def main() -> int:
    rng = random.Random(SEED)
    prompts = []
    with IN_PATH.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line))

    rows = []
    for p_idx, p in enumerate(prompts):
        lang = p["language"]
        pid = prompt_id(lang, p["prompt"])
        pool = []
        for k in range(SAMPLES_PER_PROMPT):
            quality = rng.random()
            text = make_response(rng, lang, quality)
            reward = round(2.0 * quality - 1.0 + rng.gauss(0.0, 0.3), 4)
            pool.append({"prompt_id": pid, "language": lang, "sample_idx": k,
                         "text": text, "reward": reward})
        for t_idx, dst, src in TIE_ROWS:
            if t_idx == p_idx:
                pool[dst]["reward"] = pool[src]["reward"]
        for row in pool:
            if (p_idx, row["sample_idx"]) in NULL_ROWS:
                row["reward"] = None
        rows.extend(pool)

    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    with OUT_PATH.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    nulls = sum(1 for r in rows if r["reward"] is None)
    n_prompts = len({r["prompt_id"] for r in rows})
    print(f"wrote {OUT_PATH}: rows={len(rows)} prompts={n_prompts} nulls={nulls} seed={SEED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
