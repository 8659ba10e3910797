//! Court orders made with the openssl command line (fixtures/make-orders.sh)
//! verified by `postern_legal::order`.

mod common;

use common::{fixtures, now, read, trust};
use postern_legal::order::{OrderError, fingerprint, verify_order};
use postern_legal::policy::OrderStatus;

fn check(
    j: &str,
    doc: &str,
    sig: &[u8],
) -> Result<postern_legal::order::VerifiedOrder, OrderError> {
    verify_order(&trust(), j, &read(doc), sig, now())
}

#[test]
fn a_court_order_signed_through_an_intermediate_verifies() {
    let v = check("DE", "order.pdf", &read("de-order.p7s")).unwrap();
    assert!(v.signer.contains("CN=Amtsgericht Test"), "{}", v.signer);
    assert!(v.anchor.contains("CN=DE Test Court Root"), "{}", v.anchor);
    assert_eq!(v.chain_len, 3);
    // Without signed attributes, the signature is over the document itself.
    let v = check("DE", "order.pdf", &read("de-noattr.p7s")).unwrap();
    assert_eq!(v.chain_len, 3);
}

#[test]
fn an_ecdsa_court_verifies_for_its_own_jurisdiction_only() {
    let v = check("FR", "order.pdf", &read("fr-order.p7s")).unwrap();
    assert_eq!(v.chain_len, 2);
    let e = check("DE", "order.pdf", &read("fr-order.p7s")).unwrap_err();
    assert_eq!(e.status(), OrderStatus::UntrustedCourt, "{e}");
    let e = check("US", "order.pdf", &read("de-order.p7s")).unwrap_err();
    assert!(matches!(e, OrderError::NoAnchors(_)), "{e}");
    assert_eq!(e.status(), OrderStatus::UntrustedCourt);
}

#[test]
fn forgeries_are_invalid() {
    // A signature over another document.
    let e = check("DE", "other.pdf", &read("de-order.p7s")).unwrap_err();
    assert!(matches!(e, OrderError::BadSignature(_)), "{e}");
    assert_eq!(e.status(), OrderStatus::Invalid);
    // A tampered signature value (the last bytes of the blob).
    for sig in ["de-order.p7s", "de-noattr.p7s", "fr-order.p7s"] {
        let mut s = read(sig);
        let n = s.len();
        s[n - 2] ^= 0x40;
        let j = if sig.starts_with("fr") { "FR" } else { "DE" };
        let e = check(j, "order.pdf", &s).unwrap_err();
        assert_eq!(e.status(), OrderStatus::Invalid, "{sig}: {e}");
    }
    // A self-signed certificate claiming to be the court.
    let e = check("DE", "order.pdf", &read("self-signed.p7s")).unwrap_err();
    assert!(matches!(e, OrderError::Untrusted { .. }), "{e}");
    // The document embedded instead of detached.
    let e = check("DE", "order.pdf", &read("de-attached.p7s")).unwrap_err();
    assert!(matches!(e, OrderError::Malformed(_)), "{e}");
    // Truncated.
    let s = read("de-order.p7s");
    let e = check("DE", "order.pdf", &s[..s.len() / 2]).unwrap_err();
    assert!(matches!(e, OrderError::Malformed(_)), "{e}");
    // Every error message says what to do or what was wrong.
    assert!(e.to_string().contains("openssl cms -sign"));
}

#[test]
fn expired_and_revoked_certificates_are_refused() {
    let e = check("DE", "order.pdf", &read("de-expired.p7s")).unwrap_err();
    assert_eq!(e.status(), OrderStatus::Expired, "{e}");
    assert!(e.to_string().contains("2021-01-01"), "{e}");
    // The valid court, checked after its certificate's end.
    let e = verify_order(
        &trust(),
        "DE",
        &read("order.pdf"),
        &read("de-order.p7s"),
        now() + 3660 * 86_400,
    )
    .unwrap_err();
    assert_eq!(e.status(), OrderStatus::Expired, "{e}");

    let court = x509_cert::Certificate::load_pem_chain(&read("de-court.pem")).unwrap();
    let mut t = trust();
    t.revoke("DE", fingerprint(&court[0]).unwrap());
    let e = verify_order(&t, "DE", &read("order.pdf"), &read("de-order.p7s"), now()).unwrap_err();
    assert_eq!(e.status(), OrderStatus::Revoked, "{e}");
}

#[test]
fn pem_signatures_are_accepted() {
    let out = std::process::Command::new("openssl")
        .args(["cms", "-cmsout", "-inform", "DER", "-outform", "PEM", "-in"])
        .arg(fixtures().join("de-order.p7s"))
        .output()
        .unwrap();
    assert!(out.status.success());
    check("DE", "order.pdf", &out.stdout).unwrap();
}
