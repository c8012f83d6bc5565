//! ISO 639-1 language codes: the vocabulary of every `language` column.

/// All 183 two-letter codes of ISO 639-1, sorted, so membership is a binary search.
const ISO_639_1: [&str; 183] = [
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bi", "bm", "bn", "bo",
    "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da", "de", "dv", "dz", "ee", "el", "en", "eo",
    "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr", "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi",
    "ho", "hr", "ht", "hu", "hy", "hz", "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka",
    "kg", "ki", "kj", "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln",
    "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb", "nd", "ne", "ng",
    "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi", "pl", "ps", "pt", "qu", "rm", "rn",
    "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su",
    "sv", "sw", "ta", "te", "tg", "th", "ti", "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur",
    "uz", "ve", "vi", "vo", "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// The languages the response-language detector (`whatlang`) knows, as
/// (ISO 639-1, its ISO 639-3 code in `whatlang`), sorted. Languages missing
/// here (Irish, Galician, Maltese, ...) get no detection rather than a wrong one.
const DETECTABLE: [(&str, &str); 70] = [
    ("af", "afr"),
    ("ak", "aka"),
    ("am", "amh"),
    ("ar", "ara"),
    ("az", "aze"),
    ("be", "bel"),
    ("bg", "bul"),
    ("bn", "ben"),
    ("ca", "cat"),
    ("cs", "ces"),
    ("cy", "cym"),
    ("da", "dan"),
    ("de", "deu"),
    ("el", "ell"),
    ("en", "eng"),
    ("eo", "epo"),
    ("es", "spa"),
    ("et", "est"),
    ("fa", "pes"),
    ("fi", "fin"),
    ("fr", "fra"),
    ("gu", "guj"),
    ("he", "heb"),
    ("hi", "hin"),
    ("hr", "hrv"),
    ("hu", "hun"),
    ("hy", "hye"),
    ("id", "ind"),
    ("it", "ita"),
    ("ja", "jpn"),
    ("jv", "jav"),
    ("ka", "kat"),
    ("km", "khm"),
    ("kn", "kan"),
    ("ko", "kor"),
    ("la", "lat"),
    ("lt", "lit"),
    ("lv", "lav"),
    ("mk", "mkd"),
    ("ml", "mal"),
    ("mr", "mar"),
    ("my", "mya"),
    ("nb", "nob"),
    ("ne", "nep"),
    ("nl", "nld"),
    ("or", "ori"),
    ("pa", "pan"),
    ("pl", "pol"),
    ("pt", "por"),
    ("ro", "ron"),
    ("ru", "rus"),
    ("si", "sin"),
    ("sk", "slk"),
    ("sl", "slv"),
    ("sn", "sna"),
    ("sr", "srp"),
    ("sv", "swe"),
    ("ta", "tam"),
    ("te", "tel"),
    ("th", "tha"),
    ("tk", "tuk"),
    ("tl", "tgl"),
    ("tr", "tur"),
    ("uk", "ukr"),
    ("ur", "urd"),
    ("uz", "uzb"),
    ("vi", "vie"),
    ("yi", "yid"),
    ("zh", "cmn"),
    ("zu", "zul"),
];

/// The detector's language for ISO 639-1 `code`, if it knows the language.
pub fn detector_language(code: &str) -> Option<whatlang::Lang> {
    let found = DETECTABLE.binary_search_by_key(&code, |(two, _)| two).ok()?;
    whatlang::Lang::from_code(DETECTABLE[found].1)
}

/// The ISO 639-1 code of a detected language.
pub fn iso_639_1_of(lang: whatlang::Lang) -> Option<&'static str> {
    DETECTABLE.iter().find(|(_, three)| *three == lang.code()).map(|(two, _)| *two)
}

/// Whether `code` is an ISO 639-1 code (lower case, two letters).
pub fn is_iso_639_1(code: &str) -> bool {
    ISO_639_1.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_knows_the_demo_languages() {
        assert!(ISO_639_1.windows(2).all(|w| w[0] < w[1]));
        let demo = ["en", "da", "nl", "fr", "de", "it", "es", "gl", "ga", "mt", "cy", "fi", "nb", "pt", "sv"];
        assert!(demo.iter().all(|code| is_iso_639_1(code)));
        assert!(!is_iso_639_1("xx"));
        assert!(!is_iso_639_1("EN"));
    }

    #[test]
    fn every_detector_language_round_trips() {
        assert!(DETECTABLE.windows(2).all(|w| w[0].0 < w[1].0));
        for (two, _) in DETECTABLE {
            let lang = detector_language(two).unwrap_or_else(|| panic!("{two} is not a whatlang language"));
            assert_eq!(iso_639_1_of(lang), Some(two));
        }
        assert_eq!(whatlang::Lang::all().len(), DETECTABLE.len(), "every whatlang language is mapped");
        assert!(detector_language("ga").is_none());
    }
}
