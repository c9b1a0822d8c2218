//! Word lists the generator draws from.

// ---------------------------------------------------------------------------
// Word lists. Names deliberately include non-ASCII letters and an apostrophe
// so exports are exercised with real-world text. Kept dense by hand.

pub(in crate::seed) struct City {
    pub(in crate::seed) name: &'static str,
    pub(in crate::seed) lat: f64,
    pub(in crate::seed) lon: f64,
    pub(in crate::seed) streets: [&'static str; 2],
}

pub(in crate::seed) struct Country {
    pub(in crate::seed) code: &'static str,
    pub(in crate::seed) dial: &'static str,
    /// IBAN BBAN shape, `9` a digit and `A` a letter; empty where there is no IBAN.
    pub(in crate::seed) bban: &'static str,
    pub(in crate::seed) banks: &'static [&'static str],
    pub(in crate::seed) cities: &'static [City],
}

#[rustfmt::skip]
mod lists {
    use super::{City, Country};

    pub(in crate::seed) const FIRST_NAMES: &[&str] = &[
        "Anna", "Lukas", "Sofia", "Jonas", "Emma", "Matteo", "Léa", "Noah", "Mia", "Elias", "Clara",
        "Luca", "Julia", "Felix", "Chiara", "David", "Sara", "Tobias", "Elena", "Marco", "Laura", "Jan",
        "Hannah", "Pierre", "Camille", "Oliver", "Amelia", "James", "Isabel", "Mehmet", "Zoë", "Łukasz",
        "José", "Søren", "Chloé", "Fatima", "Nikolaos", "Ingrid", "Ahmed", "Grace",
    ];
    pub(in crate::seed) const LAST_NAMES: &[&str] = &[
        "Müller", "Schmidt", "Rossi", "Bianchi", "Dubois", "Martin", "García", "Fernández", "Smith",
        "Jones", "Taylor", "Brown", "Novak", "Kowalski", "Jansen", "de Vries", "Meier", "Keller",
        "Weber", "Huber", "Moreau", "Costa", "Silva", "Nielsen", "Andersson", "O'Brien", "Fischer",
        "Wagner", "Becker", "Ricci", "Papadopoulos", "Yılmaz", "Haddad", "Larsen", "Novotný",
    ];
    pub(in crate::seed) const COMPANY_STEMS: &[&str] = &[
        "Northwind", "Blue Harbor", "Alpine", "Meridian", "Crescent", "Helvetia", "Danube", "Baltic",
        "Silverline", "Orion", "Atlas", "Pinnacle", "Greenfield", "Ironbridge", "Lakeside", "Nordic",
        "Sapphire", "Vanguard", "Westgate", "Zenith", "Golden Gate", "Redwood", "Aurora", "Caspian",
    ];
    pub(in crate::seed) const COMPANY_TRADES: &[&str] = &[
        "Trading", "Logistics", "Consulting", "Holdings", "Capital", "Import Export", "Invest",
        "Services", "Ventures", "Commodities", "Shipping", "Technologies",
    ];
    /// Neutral domains (RFC 2606 style) so synthetic people never get real addresses.
    pub(in crate::seed) const MAIL_DOMAINS: &[&str] = &[
        "example.com", "example.net", "example.org", "mail.example", "inbox.example",
    ];
    pub(in crate::seed) static DE: Country = Country { code: "DE", dial: "+49", bban: "999999999999999999",
        banks: &["Deutsche Bank", "Commerzbank", "Sparkasse KölnBonn"],
        cities: &[
            City { name: "Berlin", lat: 52.5200, lon: 13.4050, streets: ["Friedrichstraße", "Karl-Marx-Allee"] },
            City { name: "Frankfurt am Main", lat: 50.1109, lon: 8.6821, streets: ["Kaiserstraße", "Mainzer Landstraße"] },
        ],
    };
    pub(in crate::seed) static CH: Country = Country { code: "CH", dial: "+41", bban: "99999999999999999",
        banks: &["UBS", "Zürcher Kantonalbank", "PostFinance"],
        cities: &[
            City { name: "Zürich", lat: 47.3769, lon: 8.5417, streets: ["Bahnhofstrasse", "Seefeldstrasse"] },
            City { name: "Geneva", lat: 46.2044, lon: 6.1432, streets: ["Rue du Rhône", "Quai du Mont-Blanc"] },
        ],
    };
    pub(in crate::seed) static GB: Country = Country { code: "GB", dial: "+44", bban: "AAAA99999999999999",
        banks: &["Barclays", "HSBC UK", "Lloyds Bank"],
        cities: &[
            City { name: "London", lat: 51.5074, lon: -0.1278, streets: ["High Holborn", "Bishopsgate"] },
            City { name: "Manchester", lat: 53.4808, lon: -2.2426, streets: ["Deansgate", "Oxford Road"] },
        ],
    };
    pub(in crate::seed) static FR: Country = Country { code: "FR", dial: "+33", bban: "99999999999999999999999",
        banks: &["BNP Paribas", "Société Générale"],
        cities: &[
            City { name: "Paris", lat: 48.8566, lon: 2.3522, streets: ["Rue de Rivoli", "Boulevard Haussmann"] },
            City { name: "Lyon", lat: 45.7640, lon: 4.8357, streets: ["Rue de la République", "Cours Lafayette"] },
        ],
    };
    pub(in crate::seed) static NL: Country = Country { code: "NL", dial: "+31", bban: "AAAA9999999999",
        banks: &["ING", "ABN AMRO", "Rabobank"],
        cities: &[
            City { name: "Amsterdam", lat: 52.3676, lon: 4.9041, streets: ["Keizersgracht", "Damrak"] },
            City { name: "Rotterdam", lat: 51.9244, lon: 4.4777, streets: ["Coolsingel", "Witte de Withstraat"] },
        ],
    };
    pub(in crate::seed) static LU: Country = Country { code: "LU", dial: "+352", bban: "9999999999999999",
        banks: &["Banque Internationale à Luxembourg", "Spuerkeess"],
        cities: &[
            City { name: "Luxembourg", lat: 49.6116, lon: 6.1319, streets: ["Boulevard Royal", "Avenue de la Liberté"] },
        ],
    };
    pub(in crate::seed) static IT: Country = Country { code: "IT", dial: "+39", bban: "A9999999999999999999999",
        banks: &["UniCredit", "Intesa Sanpaolo"],
        cities: &[
            City { name: "Milan", lat: 45.4642, lon: 9.1900, streets: ["Via Montenapoleone", "Corso Buenos Aires"] },
        ],
    };
    pub(in crate::seed) static ES: Country = Country { code: "ES", dial: "+34", bban: "99999999999999999999",
        banks: &["Banco Santander", "BBVA"],
        cities: &[
            City { name: "Madrid", lat: 40.4168, lon: -3.7038, streets: ["Calle de Alcalá", "Gran Vía"] },
        ],
    };
    pub(in crate::seed) static AT: Country = Country { code: "AT", dial: "+43", bban: "9999999999999999",
        banks: &["Erste Bank", "Raiffeisen Bank International"],
        cities: &[
            City { name: "Vienna", lat: 48.2082, lon: 16.3738, streets: ["Kärntner Straße", "Mariahilfer Straße"] },
        ],
    };
    pub(in crate::seed) static US: Country = Country { code: "US", dial: "+1", bban: "",
        banks: &["JPMorgan Chase", "Bank of America", "Citibank"],
        cities: &[
            City { name: "New York", lat: 40.7128, lon: -74.0060, streets: ["Madison Avenue", "Wall Street"] },
            City { name: "Miami", lat: 25.7617, lon: -80.1918, streets: ["Brickell Avenue", "Biscayne Boulevard"] },
        ],
    };
    pub(in crate::seed) static CY: Country = Country { code: "CY", dial: "+357", bban: "999999999999999999999999",
        banks: &["Bank of Cyprus", "Hellenic Bank"],
        cities: &[
            City { name: "Limassol", lat: 34.7071, lon: 33.0226, streets: ["Makarios III Avenue", "Anexartisias Street"] },
        ],
    };
    pub(in crate::seed) static AE: Country = Country { code: "AE", dial: "+971", bban: "9999999999999999999",
        banks: &["Emirates NBD", "Mashreq"],
        cities: &[
            City { name: "Dubai", lat: 25.2048, lon: 55.2708, streets: ["Sheikh Zayed Road", "Al Wasl Road"] },
        ],
    };
    pub(in crate::seed) static PA: Country = Country { code: "PA", dial: "+507", bban: "",
        banks: &["Banco General", "Banistmo"],
        cities: &[
            City { name: "Panama City", lat: 8.9824, lon: -79.5199, streets: ["Calle 50", "Avenida Balboa"] },
        ],
    };
    pub(in crate::seed) static VG: Country = Country { code: "VG", dial: "+1 284", bban: "",
        banks: &["VP Bank (BVI)"],
        cities: &[
            City { name: "Road Town", lat: 18.4207, lon: -64.6400, streets: ["Main Street", "Waterfront Drive"] },
        ],
    };
    pub(in crate::seed) static ONSHORE: [&Country; 10] = [&DE, &CH, &GB, &FR, &NL, &LU, &IT, &ES, &AT, &US];
    pub(in crate::seed) static OFFSHORE: [&Country; 4] = [&CY, &AE, &PA, &VG];
    pub(in crate::seed) static COMPANY_FORMS: [(&str, &Country); 15] = [
        ("GmbH", &DE), ("AG", &CH), ("Ltd", &GB), ("LLC", &US), ("S.A.", &LU), ("B.V.", &NL),
        ("S.à r.l.", &LU), ("SAS", &FR), ("S.r.l.", &IT), ("S.L.", &ES), ("GmbH", &AT),
        ("Limited", &CY), ("Ltd", &VG), ("S.A.", &PA), ("FZE", &AE),
    ];
    pub(in crate::seed) const USER_ROLES: &[&str] = &[
        "supervisor", "investigator", "investigator", "analyst", "analyst", "auditor",
    ];
    pub(in crate::seed) const FRAUD_TYPES: &[&str] = &[
        "Invoice fraud", "Money laundering", "Account takeover", "Procurement fraud",
        "Payroll diversion", "Trade-based laundering", "CEO fraud", "Insurance claim fraud",
        "Embezzlement", "Sanctions evasion", "VAT carousel fraud", "Loan fraud",
    ];
    pub(in crate::seed) const REPORT_SOURCES: &[&str] = &[
        "the compliance team", "an automated transaction alert", "a whistleblower",
        "a correspondent bank", "the external auditor", "a law-enforcement request",
    ];
    pub(in crate::seed) const STATUSES: &[&str] = &[
        "open", "triage", "investigating", "investigating", "escalated", "closed", "archived",
    ];
    pub(in crate::seed) const PRIORITIES: &[&str] = &["low", "medium", "medium", "high", "critical"];
    pub(in crate::seed) const SERVICES: &[&str] = &[
        "consulting", "marketing", "IT support", "logistics", "market research", "software licensing",
        "facility management", "brokerage",
    ];
    pub(in crate::seed) const MONTHS: &[&str] = &[
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ];
    pub(in crate::seed) const SUBJECT_ROLES: &[&str] = &[
        "Director", "Beneficial owner", "Account holder", "Authorised signatory", "Former employee",
        "Nominee director", "Supplier contact",
    ];
    pub(in crate::seed) const MODELS: &[&str] = &[
        "rules-engine 4.2", "gbm-risk 2024.06", "graph-link 1.9", "txn-anomaly 3.0", "manual review",
    ];
    pub(in crate::seed) const DECISIONS: &[&str] = &["escalate", "monitor", "dismiss", "file_sar", "request_information"];
    pub(in crate::seed) const INDICATOR_TYPES: &[&str] = &[
        "structuring", "rapid_movement", "high_risk_country", "round_amounts", "shell_company",
        "pep_match", "sanctions_screening_hit", "unusual_hours", "velocity_spike", "money_mule_pattern",
        "dormant_account_reactivation", "layering",
    ];
    pub(in crate::seed) const DOC_MIME: &[(&str, &str)] = &[
        ("application/pdf", "Bank statement"), ("application/pdf", "Invoice"),
        ("application/pdf", "Service agreement"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "Board minutes"),
        ("application/pdf", "KYC file"), ("text/plain", "Interview transcript"),
        ("image/tiff", "Scanned ledger"),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "Payment run export"),
    ];
    pub(in crate::seed) const PHOTO_SUBJECTS: &[&str] = &[
        "signed contract page", "ATM camera still", "office entrance", "whiteboard in meeting room",
        "seized laptop", "handwritten ledger", "delivery note", "passport copy", "warehouse shelves",
    ];
    pub(in crate::seed) const CAMERAS: &[(&str, &str, &str)] = &[
        ("Apple", "iPhone 13", "17.2.1"), ("Apple", "iPhone 15 Pro", "18.1"),
        ("samsung", "SM-S918B", "S918BXXU3BWK5"), ("Google", "Pixel 8", "HDR+ 1.0.584"),
        ("Canon", "Canon EOS R6", "Firmware Version 1.8.1"),
        ("NIKON CORPORATION", "NIKON D750", "Ver.1.15"), ("SONY", "ILCE-7M3", "ILCE-7M3 v4.01"),
        ("FUJIFILM", "X-T4", "Digital Camera X-T4 Ver2.00"),
    ];
    pub(in crate::seed) const RESOLUTIONS: &[(i64, i64)] = &[
        (4032, 3024), (3024, 4032), (6000, 4000), (4000, 3000), (1920, 1080), (8256, 5504),
    ];
    pub(in crate::seed) const EXPOSURES: &[&str] = &["1/30", "1/60", "1/125", "1/250", "1/500", "1/1000"];
    pub(in crate::seed) const F_NUMBERS: &[&str] = &["1.8", "2.8", "4.0", "5.6", "8.0"];
    pub(in crate::seed) const ISOS: &[u32] = &[100, 200, 400, 800, 1600, 3200];
    pub(in crate::seed) const EMAIL_SUBJECTS: &[&str] = &[
        "Re: payment instruction", "Fwd: updated bank details", "Urgent - transfer today",
        "Re: Re: outstanding balance", "Confidential: acquisition", "Signed contract attached",
        "Quarterly reconciliation", "Invoice reminder",
    ];
    pub(in crate::seed) const EMAIL_SENTENCES: &[&str] = &[
        "Please process the attached invoice before Friday.",
        "Our bank details have changed, kindly use the new account going forward.",
        "As discussed, the amount should be split into several smaller payments.",
        "Please keep this confidential until the deal is announced.",
        "Let me know once the transfer has been released.", "The auditors will not need to see this.",
        "I have attached the signed contract for your records.",
        "Can you confirm receipt by return email?", "The CFO has approved this, no need to call.",
        "Use the reference exactly as written or the payment will bounce.",
    ];
    pub(in crate::seed) const LINK_RELATIONS: &[&str] = &[
        "attachment_of", "references", "derived_from", "contradicts", "duplicate_of",
    ];
    pub(in crate::seed) const CROSS_RELATIONS: &[&str] = &["same_device", "same_sender", "duplicate_of", "references"];
    pub(in crate::seed) const ANNOTATIONS: &[&str] = &[
        "Amount on this page does not match the ledger entry.",
        "Signature appears to be copied from another document.",
        "File metadata predates the stated creation date.",
        "Consistent with the bank statement for the same period.",
        "Same device serial number as evidence in a related case.",
        "Redact third-party personal data before disclosure.",
        "Handwritten note in margin: 'pay via Cyprus'.", "Timestamps are local time, not UTC.",
        "Sender domain was registered days before first contact.",
        "Checked against original: identical hash.",
    ];
    pub(in crate::seed) const NOTES: &[&str] = &[
        "Called the subject; no answer, left a voicemail.",
        "Requested account statements from the bank.", "Subject's lawyer asked for a meeting.",
        "Escalating: amounts exceed the internal threshold.",
        "Reviewed evidence batch; several items still unhashed.",
        "Screened all counterparties against sanctions lists: no match.",
        "Waiting for the production order from the prosecutor's office.",
        "Interview scheduled at the field office.", "Linked to an earlier alert on the same IBAN.",
    ];
    pub(in crate::seed) const REPLIES: &[&str] = &[
        "Agreed, go ahead.", "Done, statements are attached as evidence.",
        "Please loop in compliance before contacting the subject.",
        "Can we confirm the IBAN with the bank first?", "Noted. Re-opened the related alert.",
        "Follow-up: the subject called back and confirmed the transfer.",
    ];
    pub(in crate::seed) const CUSTODY_FOLLOW_UPS: &[&str] = &[
        "hashed", "imaged", "transferred", "checked_out", "checked_in", "sealed", "accessed",
        "copy_exported",
    ];
    pub(in crate::seed) const CUSTODY_LOCATIONS: &[&str] = &[
        "Evidence room B2", "Forensic lab 1", "Secure locker 14", "Courier, sealed bag",
        "Remote acquisition", "Zürich field office", "London field office",
    ];
}
pub(super) use lists::*;
