//! Environment variables, on SQLite and on PostgreSQL: each deployment snapshots its
//! environment's variables when created; secrets are sealed at rest, never listed, and opened
//! only into the agents' desired documents, under the right key.

use std::collections::BTreeMap;

use slipway_store::{StoreError, VariableValue};
use slipway_testkit::TestDb;

mod common;
use common::{deployment, fixture};

on_both_backends!(
    deployments_snapshot_their_variables_with_secrets_sealed,
    secrets_need_the_key,
);

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn vars(list: &[(&str, &str, bool)]) -> BTreeMap<String, VariableValue> {
    list.iter()
        .map(|(name, value, secret)| {
            let v = VariableValue {
                value: value.to_string(),
                secret: *secret,
            };
            (name.to_string(), v)
        })
        .collect()
}

async fn deployments_snapshot_their_variables_with_secrets_sealed(db: &TestDb) {
    let mut f = fixture(db).await;
    f.store = f.store.with_secrets_key(Some(KEY)).unwrap();
    let s = &f.store;
    let names = s
        .set_variables(
            "env_1",
            &vars(&[("A", "one", false), ("TOKEN", "s3cret", true)]),
            5,
        )
        .await
        .unwrap();
    assert_eq!(names, ["A", "TOKEN"]);
    let listed = s.variables("env_1").await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|v| (v.name.as_str(), v.secret, v.value.as_deref()))
            .collect::<Vec<_>>(),
        [("A", false, Some("one")), ("TOKEN", true, None)]
    );
    deployment(&f, "dep_1").await;

    // Changed after dep_1 was created: dep_1 keeps what it had.
    s.set_variables("env_1", &vars(&[("A", "two", false)]), 6)
        .await
        .unwrap();
    assert_eq!(
        s.unset_variables("env_1", &["TOKEN".into(), "NONE".into()])
            .await
            .unwrap(),
        ["TOKEN"]
    );
    deployment(&f, "dep_2").await;

    let d1 = s.deployment("dep_1").await.unwrap();
    assert_eq!(d1.env, BTreeMap::from([("A".into(), "one".into())]));
    let sealed = &d1.secret_env["TOKEN"];
    assert!(!sealed.contains("s3cret"), "sealed at rest: {sealed}");
    let row = &s.topology("dep_1").await.unwrap()[0];
    let doc = s.desired_for(&d1, row).unwrap();
    assert_eq!(doc.env["A"], "one");
    assert_eq!(doc.env["TOKEN"], "s3cret");
    assert!(!d1.desired_without_secrets(row).env.contains_key("TOKEN"));

    let d2 = s.deployment("dep_2").await.unwrap();
    let doc = s
        .desired_for(&d2, &s.topology("dep_2").await.unwrap()[0])
        .unwrap();
    assert_eq!(doc.env, BTreeMap::from([("A".into(), "two".into())]));

    assert!(matches!(
        s.set_variables("env_nope", &vars(&[("A", "x", false)]), 7)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn secrets_need_the_key(db: &TestDb) {
    let f = fixture(db).await;
    let keyless = f.store.clone();
    let err = keyless
        .set_variables("env_1", &vars(&[("A", "x", false), ("T", "y", true)]), 5)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SLIPWAY_SECRETS_KEY"), "{err}");
    assert!(
        keyless.variables("env_1").await.unwrap().is_empty(),
        "nothing written"
    );

    let keyed = f.store.clone().with_secrets_key(Some(KEY)).unwrap();
    keyed
        .set_variables("env_1", &vars(&[("T", "y", true)]), 5)
        .await
        .unwrap();
    deployment(&f, "dep_1").await;
    let d = keyed.deployment("dep_1").await.unwrap();
    let row = &keyed.topology("dep_1").await.unwrap()[0];
    assert!(keyless.desired_for(&d, row).is_err());
    let other = f
        .store
        .clone()
        .with_secrets_key(Some(&"ab".repeat(32)))
        .unwrap();
    let err = other.desired_for(&d, row).unwrap_err();
    assert!(err.to_string().contains("cannot be opened"), "{err}");
}
