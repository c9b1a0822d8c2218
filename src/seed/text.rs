//! Rendering helpers: picks, names, sentences, money, IBANs, times.

use super::words::*;
use super::{END, START};
use rand::Rng;
use rand::rngs::StdRng;
use std::fmt::Write as _;
use time::OffsetDateTime;

/// Alphabet for the fake password hashes.
pub(super) const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A person or company with the country its bank and address come from.
pub(super) struct Party {
    pub(super) name: String,
    /// For companies the brand part of the name, used for the mail domain.
    pub(super) stem: &'static str,
    pub(super) is_person: bool,
    pub(super) country: &'static Country,
}

impl Party {
    pub(super) fn person(rng: &mut StdRng) -> Self {
        let (first, last) = person(rng);
        let country = if rng.gen_bool(0.9) {
            *pick(rng, &ONSHORE)
        } else {
            *pick(rng, &OFFSHORE)
        };
        Self {
            name: format!("{first} {last}"),
            stem: "",
            is_person: true,
            country,
        }
    }

    pub(super) fn company(rng: &mut StdRng) -> Self {
        let stem = *pick(rng, COMPANY_STEMS);
        let (form, country) = *pick(rng, &COMPANY_FORMS);
        Self {
            name: format!("{stem} {} {form}", pick(rng, COMPANY_TRADES)),
            stem,
            is_person: false,
            country,
        }
    }

    pub(super) fn email(&self, rng: &mut StdRng) -> String {
        let mut out = String::new();
        push_slug(&mut out, &self.name);
        out.push('@');
        out.push_str(pick::<&str>(rng, MAIL_DOMAINS));
        out
    }
}

pub(super) fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

pub(super) fn person(rng: &mut StdRng) -> (&'static str, &'static str) {
    (*pick(rng, FIRST_NAMES), *pick(rng, LAST_NAMES))
}

/// Uniform in `[lo, hi)`, or `lo` when the range is empty.
pub(super) fn between(rng: &mut StdRng, lo: i64, hi: i64) -> i64 {
    if hi > lo { rng.gen_range(lo..hi) } else { lo }
}

pub(super) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Long-tailed amount in cents, built from integer buckets rather than
/// `powf`/`exp` so the output cannot differ between libm implementations.
pub(super) fn amount_cents(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..100) {
        // Structuring: just under a 10,000 reporting threshold.
        0..5 => rng.gen_range(900_000..1_000_000),
        5..15 => rng.gen_range(1..=50) * 50_000,
        r => {
            let magnitude: u32 = match r {
                15..42 => 1,
                42..72 => 2,
                72..91 => 3,
                91..97 => 4,
                97..99 => 5,
                _ => 6,
            };
            let lo = 10_i64.pow(magnitude) * 100;
            rng.gen_range(lo..lo * 10)
        }
    }
}

pub(super) fn push_money(out: &mut String, cents: i64) {
    let units = cents / 100;
    let digits = units.to_string();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    w!(out, ".{:02}", cents % 100);
}

/// Appends one sentence of investigator prose plus a trailing space.
// Long: a small grammar, one arm per sentence shape.
pub(super) fn push_sentence(rng: &mut StdRng, out: &mut String) {
    match rng.gen_range(0..12) {
        0 => {
            let (f, l) = person(rng);
            let to = Party::company(rng);
            let day = date(between(rng, START, END));
            w!(out, "On {day}, {f} {l} instructed a transfer of ");
            push_money(out, amount_cents(rng));
            w!(out, " EUR to {}.", to.name);
        }
        1 => {
            let c = Party::company(rng);
            w!(
                out,
                "Invoice {} from {} lists {} services that could not be matched to any delivery.",
                rng.gen_range(10_000..99_999),
                c.name,
                pick(rng, SERVICES)
            );
        }
        2 => {
            let (f1, l1) = person(rng);
            let (f2, l2) = person(rng);
            w!(
                out,
                "{f1} {l1} stated that the payment had been approved by {f2} {l2} by telephone."
            );
        }
        3 => w!(
            out,
            "Account statements show {} incoming transfers just below 10,000 EUR within {} days.",
            rng.gen_range(3..30),
            rng.gen_range(2..30)
        ),
        4 => w!(
            out,
            "The signature on page {} differs from the specimen held on file.",
            rng.gen_range(1..20)
        ),
        5 => {
            let country = pick(rng, &OFFSHORE);
            w!(
                out,
                "Funds were forwarded the same day to an account at {} in {}.",
                pick(rng, country.banks),
                pick(rng, country.cities).name
            );
        }
        6 => out.push_str("No commercial rationale for the transaction was documented."),
        7 => w!(
            out,
            "The contract is dated {} but the file metadata shows it was created {} days later.",
            date(between(rng, START, END)),
            rng.gen_range(2..200)
        ),
        8 => {
            let c = Party::company(rng);
            w!(
                out,
                "{} shares a registered address with {} other entities in {}.",
                c.name,
                rng.gen_range(5..400),
                pick(rng, c.country.cities).name
            );
        }
        9 => {
            let c = Party::company(rng);
            w!(
                out,
                "The beneficial owner of {} could not be verified from public registers.",
                c.name
            );
        }
        10 => {
            let p = Party::person(rng);
            w!(
                out,
                "{} holds signing authority on {} accounts, including one at {}.",
                p.name,
                rng.gen_range(2..12),
                pick(rng, p.country.banks)
            );
        }
        _ => w!(
            out,
            "Several payments reference purchase order {:07} with slightly different amounts.",
            rng.gen_range(0..10_000_000)
        ),
    }
    // A company name ending in "S.A." already closes the sentence.
    if out.ends_with("..") {
        out.pop();
    }
    out.push(' ');
}

pub(super) fn push_indicator_detail(rng: &mut StdRng, out: &mut String, kind: &str) {
    match kind {
        "structuring" => w!(
            out,
            "{} deposits between 9,000 and 9,999 within {} days",
            rng.gen_range(3..25),
            rng.gen_range(2..30)
        ),
        "rapid_movement" => w!(
            out,
            "{}% of inbound funds moved on within {} hours",
            rng.gen_range(60..100),
            rng.gen_range(1..48)
        ),
        "high_risk_country" => w!(
            out,
            "counterparty domiciled in {}",
            pick(rng, &OFFSHORE).code
        ),
        "round_amounts" => w!(
            out,
            "{}% of transfers are round amounts",
            rng.gen_range(30..95)
        ),
        "shell_company" => w!(
            out,
            "{} has no employees and a nominee director",
            Party::company(rng).name
        ),
        _ => w!(
            out,
            "rule R-{:03} fired {} times",
            rng.gen_range(1..400),
            rng.gen_range(1..20)
        ),
    }
}

/// An IBAN with valid mod-97 check digits, or None for countries without IBANs.
pub(super) fn iban(rng: &mut StdRng, country: &Country) -> Option<String> {
    if country.bban.is_empty() {
        return None;
    }
    let mut bban = String::with_capacity(country.bban.len());
    for c in country.bban.bytes() {
        let ch = if c == b'9' {
            rng.gen_range(b'0'..=b'9')
        } else {
            rng.gen_range(b'A'..=b'Z')
        };
        bban.push(char::from(ch));
    }
    // ISO 13616: check digits make (BBAN + country + check) ≡ 1 (mod 97).
    let mut rem = 0u32;
    for c in bban.chars().chain(country.code.chars()).chain("00".chars()) {
        rem = match c.to_digit(36) {
            Some(v) if v >= 10 => (rem * 100 + v) % 97,
            Some(v) => (rem * 10 + v) % 97,
            None => rem,
        };
    }
    Some(format!("{}{:02}{bban}", country.code, 98 - rem))
}

pub(super) fn push_slug(out: &mut String, s: &str) {
    let mut dot = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'ä' | 'á' | 'à' | 'â' | 'å' => 'a',
            'ö' | 'ó' | 'ò' | 'ô' | 'ø' => 'o',
            'ü' | 'ú' | 'ù' | 'û' => 'u',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' | 'ı' => 'i',
            'ç' => 'c',
            'ñ' => 'n',
            'ł' => 'l',
            'ş' => 's',
            'ý' => 'y',
            c => c,
        };
        if c.is_ascii_alphanumeric() {
            out.push(c);
            dot = false;
        } else if c == ' ' && !dot {
            out.push('.');
            dot = true;
        }
    }
}

pub(super) fn push_letters(rng: &mut StdRng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from(rng.gen_range(b'A'..=b'Z')));
    }
}

pub(super) fn push_b64(rng: &mut StdRng, out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(char::from(*pick(rng, B64)));
    }
}

pub(super) fn civil(secs: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
}

pub(super) fn year(secs: i64) -> i32 {
    civil(secs).year()
}

/// `2025-03-14T09:26:53Z`
pub(super) fn iso(secs: i64) -> String {
    let t = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2025-03-14`
pub(super) fn date(secs: i64) -> String {
    let t = civil(secs);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// EXIF's own `2025:03:14 09:26:53` layout.
pub(super) fn exif_time(secs: i64) -> String {
    let t = civil(secs);
    format!(
        "{:04}:{:02}:{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
