//! Tests of `SCRAM-SHA-256`: the RFC 7677 §3 example, whole exchanges (also through
//! [`Conversation`]), refusals, the credential line format, and arbitrary bytes.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::auth::enhanced::{Authenticators, Client, Conversation, Reply};
use crate::protocol::{Auth, Properties, ReasonCode, Str};

// RFC 7677 §3.
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// Fewer iterations than production, so debug-build tests stay fast.
const TEST_ITERATIONS: u32 = 64;

fn rfc_credential() -> ScramCredential {
    ScramCredential::from_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
}

/// The test store, built once: the RFC's credential costs 4096 iterations.
fn server() -> &'static ScramSha256 {
    static SERVER: std::sync::OnceLock<ScramSha256> = std::sync::OnceLock::new();
    SERVER.get_or_init(build_server)
}

fn build_server() -> ScramSha256 {
    ScramSha256::new([
        ("user".to_owned(), rfc_credential()),
        (
            "a,b=c".to_owned(),
            ScramCredential::from_password("secret", b"salt-of-a,b=c...", TEST_ITERATIONS),
        ),
        (
            "bob".to_owned(),
            ScramCredential::from_password("hunter2", b"salt-of-bob-0016", TEST_ITERATIONS),
        ),
    ])
    .unwrap()
}

fn start(data: &[u8]) -> Start<'_> {
    Start {
        client_id: "c1",
        username: None,
        data,
        reauthentication: false,
    }
}

/// Runs `data` through `start`, expecting a challenge.
fn challenge(server: &ScramSha256, data: &[u8], nonce: &str) -> (Vec<u8>, Box<dyn Exchange>) {
    match server.start_with_nonce(&start(data), nonce) {
        Step::Continue { data, exchange } => (data, exchange),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn fail(step: Step) -> AuthFailure {
    match step {
        Step::Fail(failure) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A whole exchange with a random server nonce; the server's last step.
fn exchange(server: &ScramSha256, user: &str, password: &str) -> (Step, ScramClientFinal) {
    let client = ScramClient::new(user, password).unwrap();
    let step = server.start(&start(&client.client_first()));
    let Step::Continue { data, exchange } = step else {
        panic!("expected a challenge, got {step:?}");
    };
    let (awaiting, client_final) = client.server_first(&data).unwrap();
    (exchange.next(&client_final), awaiting)
}

#[test]
fn the_rfc_7677_example_client_side() {
    let client = ScramClient::with_nonce("user", "pencil", RFC_CLIENT_NONCE).unwrap();
    assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
    let (awaiting, client_final) = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), RFC_CLIENT_FINAL);
    awaiting.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn the_rfc_7677_example_server_side() {
    let server = server();
    let (server_first, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE);
    assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
    match exchange.next(RFC_CLIENT_FINAL.as_bytes()) {
        Step::Success { data, identity } => {
            assert_eq!(data.as_deref(), Some(RFC_SERVER_FINAL.as_bytes()));
            assert_eq!(identity.as_deref(), Some("user"));
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn a_whole_exchange_with_random_nonces() {
    let server = server();
    for (user, password) in [("user", "pencil"), ("bob", "hunter2"), ("a,b=c", "secret")] {
        let (step, awaiting) = exchange(server, user, password);
        let Step::Success {
            data: Some(server_final),
            identity,
        } = step
        else {
            panic!("{user}: expected success, got {step:?}");
        };
        assert_eq!(identity.as_deref(), Some(user));
        awaiting.server_final(&server_final).unwrap();
    }
}

#[test]
fn server_nonces_are_fresh() {
    let server = server();
    let first = || {
        let Step::Continue { data, .. } = server.start(&start(RFC_CLIENT_FIRST.as_bytes())) else {
            panic!("expected a challenge");
        };
        String::from_utf8(data).unwrap()
    };
    let (a, b) = (first(), first());
    assert_ne!(a, b);
    let nonce = a.split(',').next().unwrap();
    assert!(nonce.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
    assert_eq!(nonce.len(), "r=rOprNGfwEbeRWgbNEkqO".len() + 24);
}

#[test]
fn a_wrong_password_is_not_authorized() {
    let (step, _) = exchange(server(), "bob", "hunter3");
    assert_eq!(fail(step), AuthFailure::NotAuthorized);
}

#[test]
fn an_unknown_user_looks_known_until_the_proof() {
    let server = server();
    let first = |user: &str| {
        let client = ScramClient::with_nonce(user, "x", "nonce").unwrap();
        let (data, _) = challenge(server, &client.client_first(), "server");
        String::from_utf8(data).unwrap()
    };
    let unknown = first("mallory");
    // Same shape as a known user's, the store's usual iteration count, and the same salt on
    // every attempt; another unknown user gets another salt.
    assert!(unknown.starts_with("r=nonceserver,s="), "{unknown}");
    assert!(
        unknown.ends_with(&format!(",i={TEST_ITERATIONS}")),
        "{unknown}"
    );
    assert_eq!(unknown.len(), first("bob").len());
    assert_eq!(unknown, first("mallory"));
    assert_ne!(unknown, first("mallorz"));
    // A server with the same store answers the same salt (restarts do not give it away).
    let again = |user: &str| {
        let client = ScramClient::with_nonce(user, "x", "nonce").unwrap();
        let (data, _) = challenge(&build_server(), &client.client_first(), "server");
        String::from_utf8(data).unwrap()
    };
    assert_eq!(unknown, again("mallory"));

    let (step, _) = exchange(server, "mallory", "");
    assert_eq!(fail(step), AuthFailure::NotAuthorized);
}

#[test]
fn an_empty_store_still_answers_unknown_users() {
    let server = ScramSha256::new([]).unwrap();
    assert!(server.is_empty());
    let (data, _) = challenge(&server, RFC_CLIENT_FIRST.as_bytes(), "s");
    let data = String::from_utf8(data).unwrap();
    assert!(
        data.ends_with(&format!(",i={DEFAULT_ITERATIONS}")),
        "{data}"
    );
    let (step, _) = exchange(&server, "user", "pencil");
    assert_eq!(fail(step), AuthFailure::NotAuthorized);
}

#[test]
fn a_tampered_nonce_is_refused() {
    let server = server();
    let (_, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE);
    let tampered = RFC_CLIENT_FINAL.replace("k0,p=", "k1,p=");
    assert_eq!(
        fail(exchange.next(tampered.as_bytes())),
        AuthFailure::NotAuthorized
    );

    // Replaying the RFC's client-final against another server nonce fails too.
    let (_, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), "other-nonce");
    assert_eq!(
        fail(exchange.next(RFC_CLIENT_FINAL.as_bytes())),
        AuthFailure::NotAuthorized
    );
}

#[test]
fn a_tampered_proof_or_channel_binding_is_refused() {
    let server = server();
    for tampered in [
        RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc"),
        RFC_CLIENT_FINAL.replace("c=biws", "c=eSws"), // "y,,": not what client-first said
        RFC_CLIENT_FINAL.replace(",p=", ",x=extension,p="), // changes AuthMessage
    ] {
        let (_, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE);
        assert_eq!(
            fail(exchange.next(tampered.as_bytes())),
            AuthFailure::NotAuthorized
        );
    }
}

#[test]
fn channel_binding_flags() {
    let server = server();
    // `y`: the client could bind but thinks the server cannot; we cannot, so that is fine.
    let client_first = RFC_CLIENT_FIRST.replacen('n', "y", 1);
    let (_, exchange) = challenge(server, client_first.as_bytes(), RFC_SERVER_NONCE);
    // With c=eSws (base64 "y,,") the proof is over another AuthMessage: refused as a bad
    // proof, but not as a malformed message.
    let client_final = RFC_CLIENT_FINAL.replace("c=biws", "c=eSws");
    assert_eq!(
        fail(exchange.next(client_final.as_bytes())),
        AuthFailure::NotAuthorized
    );

    for bad in [
        "p=tls-unique,,n=user,r=abc",
        "x,,n=user,r=abc",
        ",,n=user,r=abc",
    ] {
        let step = server.start_with_nonce(&start(bad.as_bytes()), "s");
        assert!(matches!(fail(step), AuthFailure::Malformed(_)), "{bad}");
    }
}

#[test]
fn saslname_escapes() {
    assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
    assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
    assert_eq!(decode_saslname("plain").unwrap(), "plain");
    for bad in ["=", "a=2", "a=2c", "=41", "a==3D"] {
        assert!(decode_saslname(bad).is_err(), "{bad}");
    }
    let client = ScramClient::with_nonce("a,b=c", "secret", "n").unwrap();
    assert_eq!(client.client_first(), b"n,,n=a=2Cb=3Dc,r=n");
}

#[test]
fn the_connect_user_name_and_authzid() {
    let server = server();
    let with_user = |data: &'static [u8], username| Start {
        username,
        ..start(data)
    };
    // An empty n= takes CONNECT's User Name (as PostgreSQL's clients do).
    let step = server.start_with_nonce(&with_user(b"n,,n=,r=abc", Some("user")), "s");
    assert!(matches!(step, Step::Continue { .. }));
    let step = server.start_with_nonce(&with_user(b"n,,n=,r=abc", None), "s");
    assert!(matches!(fail(step), AuthFailure::Malformed(_)));
    // When both name a user they agree.
    let step = server.start_with_nonce(&with_user(b"n,,n=user,r=abc", Some("user")), "s");
    assert!(matches!(step, Step::Continue { .. }));
    let step = server.start_with_nonce(&with_user(b"n,,n=user,r=abc", Some("bob")), "s");
    assert_eq!(fail(step), AuthFailure::NotAuthorized);
    // An authzid may only name the user itself.
    let step = server.start_with_nonce(&start(b"n,a=user,n=user,r=abc"), "s");
    assert!(matches!(step, Step::Continue { .. }));
    let step = server.start_with_nonce(&start(b"n,a=bob,n=user,r=abc"), "s");
    assert_eq!(fail(step), AuthFailure::NotAuthorized);
}

#[test]
fn malformed_client_first_messages() {
    let server = server();
    let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"n,,r=abc",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,n=user,r=a,b",
        b"n,,n=user,r=a\x7fb",
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,b=x,n=user,r=abc",
        b"n,,n=user,r=abc,=x",
        b"n,,n=\xff,r=abc",
        long.as_bytes(),
    ];
    for &case in cases {
        let step = server.start_with_nonce(&start(case), "s");
        assert!(
            matches!(fail(step), AuthFailure::Malformed(_)),
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }
    // Extensions after the nonce are allowed and ignored.
    let step = server.start_with_nonce(&start(b"n,,n=user,r=abc,x=1"), "s");
    assert!(matches!(step, Step::Continue { .. }));
}

#[test]
fn malformed_client_final_messages() {
    let server = server();
    let cases = [
        "",
        "c=biws",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!!",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=b!ws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ];
    for case in cases {
        let (_, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE);
        assert!(
            matches!(
                fail(exchange.next(case.as_bytes())),
                AuthFailure::Malformed(_)
            ),
            "{case}"
        );
    }
}

#[test]
fn the_client_refuses_bad_server_messages() {
    let client = || ScramClient::with_nonce("user", "pencil", RFC_CLIENT_NONCE).unwrap();
    let refused = |server_first: &str| client().server_first(server_first.as_bytes()).unwrap_err();
    assert_eq!(
        refused("s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        ScramError::Malformed("no nonce")
    );
    assert_eq!(
        refused("r=,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        ScramError::Nonce
    );
    assert_eq!(
        refused("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        ScramError::Nonce
    );
    assert_eq!(
        refused("r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        ScramError::Nonce
    );
    assert_eq!(
        refused("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"),
        ScramError::Iterations
    );
    assert_eq!(
        refused("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+5"),
        ScramError::Iterations
    );
    assert_eq!(
        refused("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999"),
        ScramError::Iterations
    );
    assert_eq!(
        refused("r=rOprNGfwEbeRWgbNEkqOx,s=,i=1"),
        ScramError::Malformed("the salt is empty")
    );
    assert_eq!(
        refused("m=x,r=rOprNGfwEbeRWgbNEkqOx,s=AA==,i=1"),
        ScramError::Malformed("a mandatory extension is not supported")
    );

    let (awaiting, _) = client().server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        awaiting.server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        Err(ScramError::ServerSignature)
    );
    let (awaiting, _) = client().server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        awaiting.server_final(b"e=invalid-proof"),
        Err(ScramError::Refused("invalid-proof".into()))
    );
    let (awaiting, _) = client().server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert!(matches!(
        awaiting.server_final(b"x"),
        Err(ScramError::Malformed(_))
    ));
    assert!(ScramClient::with_nonce("user", "pencil", "a,b").is_none());
}

#[test]
fn a_whole_exchange_through_a_conversation() {
    let auths = Authenticators::new().with(build_server()).unwrap();
    let client_info = Client {
        client_id: "c1",
        username: None,
    };
    let auth = |reason: ReasonCode, data: Vec<u8>| {
        let mut properties = Properties::default();
        properties.authentication_method = Some(Str::from_static(METHOD));
        properties.authentication_data = Some(Bytes::from(data));
        Auth { reason, properties }
    };
    let continue_with = |reply: Reply| match reply {
        Reply::Auth {
            reason,
            data: Some(data),
        } if reason == ReasonCode::CONTINUE_AUTHENTICATION => data,
        other => panic!("expected AUTH 0x18, got {other:?}"),
    };

    let scram = ScramClient::new("bob", "hunter2").unwrap();
    let (mut conversation, reply) =
        Conversation::connect(&auths, client_info, METHOD, &scram.client_first());
    let (awaiting, client_final) = scram.server_first(&continue_with(reply)).unwrap();
    let reply = conversation.auth(&auths, client_info, &auth(ReasonCode(0x18), client_final));
    let Reply::ConnAck {
        reason: ReasonCode::SUCCESS,
        data: Some(server_final),
    } = reply
    else {
        panic!("expected CONNACK 0x00, got {reply:?}");
    };
    awaiting.server_final(&server_final).unwrap();
    assert_eq!(conversation.identity(), Some("bob"));

    // Re-authentication: AUTH 0x19 with a new client-first, and so on.
    let scram = ScramClient::new("bob", "hunter2").unwrap();
    let reply = conversation.auth(
        &auths,
        client_info,
        &auth(ReasonCode(0x19), scram.client_first()),
    );
    let (awaiting, client_final) = scram.server_first(&continue_with(reply)).unwrap();
    let reply = conversation.auth(&auths, client_info, &auth(ReasonCode(0x18), client_final));
    let Reply::Auth {
        reason: ReasonCode::SUCCESS,
        data: Some(server_final),
    } = reply
    else {
        panic!("expected AUTH 0x00, got {reply:?}");
    };
    awaiting.server_final(&server_final).unwrap();

    // Re-authenticating as someone else, even with the right password, is refused.
    let scram = ScramClient::new("user", "pencil").unwrap();
    let reply = conversation.auth(
        &auths,
        client_info,
        &auth(ReasonCode(0x19), scram.client_first()),
    );
    let (_, client_final) = scram.server_first(&continue_with(reply)).unwrap();
    let reply = conversation.auth(&auths, client_info, &auth(ReasonCode(0x18), client_final));
    assert_eq!(
        reply,
        Reply::Disconnect {
            reason: ReasonCode::NOT_AUTHORIZED
        }
    );
}

#[test]
fn credential_lines_round_trip() {
    let credential = rfc_credential();
    let line = credential_line("user", &credential);
    assert!(
        line.starts_with("user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
        "{line}"
    );
    assert_eq!(
        parse_credential_line(&line).unwrap(),
        ("user".to_owned(), credential.clone())
    );
    // The user name may contain `:` (and `$`).
    let line = credential_line("a:b$c", &credential);
    assert_eq!(
        parse_credential_line(&line).unwrap(),
        ("a:b$c".to_owned(), credential.clone())
    );
    // The verifier alone, as PostgreSQL stores it.
    assert_eq!(
        credential.to_string().parse::<ScramCredential>().unwrap(),
        credential
    );
    // The keys stay out of logs.
    let debug = format!("{credential:?}");
    assert!(
        !debug.contains(&BASE64.encode(credential.stored_key)),
        "{debug}"
    );
}

#[test]
fn credential_line_errors_are_one_line() {
    let key = BASE64.encode([7u8; 32]);
    let ok = format!("user:SCRAM-SHA-256$4096:c2FsdA==${key}:{key}");
    assert!(parse_credential_line(&ok).is_ok());
    let short = BASE64.encode([7u8; 31]);
    let cases = [
        ("user", CredentialError::Format),
        (
            "user:SCRAM-SHA-1$4096:c2FsdA==$a:b",
            CredentialError::Format,
        ),
        (
            &*format!(":SCRAM-SHA-256$4096:c2FsdA==${key}:{key}"),
            CredentialError::EmptyUser,
        ),
        (
            &*format!("us\ter:SCRAM-SHA-256$4096:c2FsdA==${key}:{key}"),
            CredentialError::ControlCharacter,
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096c2FsdA==${key}:{key}"),
            CredentialError::Format,
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096:c2FsdA==${key}{key}"),
            CredentialError::Format,
        ),
        (
            &*format!("user:SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            CredentialError::Iterations("0".into()),
        ),
        (
            &*format!("user:SCRAM-SHA-256$-1:c2FsdA==${key}:{key}"),
            CredentialError::Iterations("-1".into()),
        ),
        (
            &*format!("user:SCRAM-SHA-256$+1:c2FsdA==${key}:{key}"),
            CredentialError::Iterations("+1".into()),
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096:c2FsdA=${key}:{key}"),
            CredentialError::Base64("salt"),
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096:${key}:{key}"),
            CredentialError::EmptySalt,
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096:c2FsdA==$!{key}:{key}"),
            CredentialError::Base64("stored key"),
        ),
        (
            &*format!("user:SCRAM-SHA-256$4096:c2FsdA==${key}:{short}"),
            CredentialError::KeyLength("server key", 31),
        ),
    ];
    for (line, expected) in cases {
        let err = parse_credential_line(line).unwrap_err();
        assert_eq!(err, expected, "{line}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    assert_eq!(
        CredentialError::KeyLength("server key", 31).to_string(),
        "the server key is 31 bytes, expected 32"
    );
}

#[test]
fn credential_files() {
    let bob = ScramCredential::from_password("hunter2", b"salt", TEST_ITERATIONS);
    let text = format!(
        "# shardmq SCRAM-SHA-256 users\n\n{}\r\n  \n{}\n",
        credential_line("bob", &bob),
        credential_line("user", &rfc_credential()),
    );
    let server = ScramSha256::from_lines(&text).unwrap();
    assert_eq!(server.len(), 2);
    let (step, _) = exchange(&server, "bob", "hunter2");
    assert!(matches!(step, Step::Success { .. }));

    let twice = format!(
        "{}\n{}\n",
        credential_line("bob", &bob),
        credential_line("bob", &bob)
    );
    let err = ScramSha256::from_lines(&twice).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"line 2: user "bob" is already listed on line 1"#
    );
    let err = ScramSha256::from_lines("# users\nbob:hunter2\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(
        err.to_string()
            .starts_with("line 2: expected `user:SCRAM-SHA-256$"),
        "{err}"
    );
}

#[test]
fn the_store_refuses_bad_credentials() {
    let mut bad = rfc_credential();
    bad.iterations = 0;
    let err = ScramSha256::new([("u".to_owned(), bad)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"user "u": iteration count "0" is not a positive 32-bit integer"#
    );
    let err = ScramSha256::new([("".to_owned(), rfc_credential())]).unwrap_err();
    assert!(matches!(
        err,
        StoreError::Invalid {
            error: CredentialError::EmptyUser,
            ..
        }
    ));
    let err = ScramSha256::new([
        ("u".to_owned(), rfc_credential()),
        ("u".to_owned(), rfc_credential()),
    ])
    .unwrap_err();
    assert_eq!(err, StoreError::Duplicate("u".into()));
}

#[test]
fn from_password_takes_0_iterations_as_1() {
    let zero = ScramCredential::from_password("p", b"s", 0);
    assert_eq!(zero, ScramCredential::from_password("p", b"s", 1));
    assert_eq!(zero.iterations, 1);
}

/// Bytes shaped like SCRAM messages: attribute letters, `=`, `,`, base64 and stray bytes.
fn scramish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"n,,".to_vec()),
        Just(b"y,".to_vec()),
        Just(b"p=".to_vec()),
        Just(b"n=".to_vec()),
        Just(b"r=".to_vec()),
        Just(b"c=biws".to_vec()),
        Just(b",p=".to_vec()),
        Just(b"=2C".to_vec()),
        Just(b"=".to_vec()),
        Just(b",".to_vec()),
        Just(RFC_CLIENT_NONCE.as_bytes().to_vec()),
        Just(RFC_SERVER_NONCE.as_bytes().to_vec()),
        Just(b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_vec()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn arbitrary_client_first_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = server().start_with_nonce(&start(&data), "s");
    }

    #[test]
    fn scramish_client_first_never_panics(data in scramish()) {
        let _ = server().start_with_nonce(&start(&data), "s");
    }

    #[test]
    fn arbitrary_client_final_never_panics_or_passes(data in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        scramish(),
    ]) {
        let server = server();
        let (_, exchange) = challenge(server, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE);
        let step = exchange.next(&data);
        prop_assert!(matches!(step, Step::Fail(_)) || data == RFC_CLIENT_FINAL.as_bytes());
    }

    #[test]
    fn arbitrary_server_messages_never_panic(data in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        scramish(),
    ]) {
        let client = ScramClient::with_nonce("user", "pencil", "r").unwrap();
        // Iteration counts from arbitrary bytes could be large: keep the PBKDF2 cheap.
        let text = String::from_utf8_lossy(&data);
        if !text.contains("i=") {
            let _ = client.server_first(&data);
        }
        let (awaiting, _) = ScramClient::with_nonce("user", "pencil", "r")
            .unwrap()
            .server_first(b"r=rs,s=AA==,i=1")
            .unwrap();
        let _ = awaiting.server_final(&data);
    }

    #[test]
    fn saslnames_round_trip(name in "[a-z,=éA-Z0-9]{0,20}") {
        prop_assert_eq!(decode_saslname(&encode_saslname(&name)).unwrap(), name);
    }
}
