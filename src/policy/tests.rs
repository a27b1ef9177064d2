use super::*;

fn who(project: &str, roles: &[&str]) -> Credentials {
    Credentials {
        user_id: "u".into(),
        project_id: Some(project.into()),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn secure_rbac_personas() {
    let p = Policy::load(None, true).unwrap();
    let t: Target = &[("project_id", "p1")];
    let reader = who("p1", &["reader"]);
    let member = who("p1", &["member", "reader"]);
    let other = who("p2", &["member", "reader"]);
    let admin = who("p9", &["admin", "member", "reader"]);
    assert!(p.enforce("ekko:backup:get", &reader, t));
    assert!(!p.enforce("ekko:backup:create", &reader, t));
    assert!(p.enforce("ekko:backup:create", &member, t));
    assert!(!p.enforce("ekko:backup:get", &other, t));
    assert!(p.enforce("ekko:backup:delete", &admin, t));
    assert!(p.enforce("ekko:backup:get_all_projects", &admin, t));
    assert!(!p.enforce("ekko:backup:get_all_projects", &member, t));
    assert!(
        !p.enforce("ekko:no:such:rule", &admin, t),
        "unknown actions are refused"
    );
    // Legacy defaults: any role in the project.
    let legacy = Policy::load(None, false).unwrap();
    assert!(legacy.enforce("ekko:backup:create", &who("p1", &["_member_"]), t));
}

/// The decision `ADMIN_SCOPE_NOTE` documents: by default an admin of
/// any project is a cloud admin; the sample's override keeps that to
/// the admin project.
#[test]
fn admin_is_cloud_wide_unless_the_documented_override_is_loaded() {
    let t: Target = &[("project_id", "p2")];
    let admin_of_p1 = Credentials {
        is_admin_project: false,
        ..who("p1", &["admin", "member", "reader"])
    };
    let cloud_admin = Credentials {
        is_admin_project: true,
        ..who("admin", &["admin", "member", "reader"])
    };
    let defaults = Policy::load(None, true).unwrap();
    assert!(defaults.enforce("ekko:backup:get_all_projects", &admin_of_p1, t));
    assert!(defaults.enforce("ekko:backup:get", &admin_of_p1, t));

    let override_line = sample()
        .lines()
        .find_map(|l| l.strip_prefix("#   \"context_is_admin\""))
        .map(|rest| format!("\"context_is_admin\"{rest}\n"))
        .expect("the sample shows the override");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, override_line).unwrap();
    let narrow = Policy::load(Some(&f), true).unwrap();
    assert!(!narrow.enforce("ekko:backup:get_all_projects", &admin_of_p1, t));
    assert!(!narrow.enforce("ekko:backup:get", &admin_of_p1, t));
    assert!(narrow.enforce("ekko:backup:get_all_projects", &cloud_admin, t));
    assert!(narrow.enforce("ekko:backup:get", &cloud_admin, t));
}

#[test]
fn syntax() {
    let c = parse("x", "(role:a or role:b) and not role:c").unwrap();
    assert_eq!(
        c,
        Check::And(vec![
            Check::Or(vec![Check::Role("a".into()), Check::Role("b".into())]),
            Check::Not(Box::new(Check::Role("c".into())))
        ])
    );
    assert_eq!(parse("x", "@").unwrap(), Check::Always);
    assert_eq!(parse("x", "").unwrap(), Check::Always);
    assert_eq!(
        parse("x", "project_id:%(project_id)s").unwrap(),
        Check::Generic {
            attribute: "project_id".into(),
            value: Value::Target("project_id".into())
        }
    );
    assert_eq!(
        parse("x", "is_admin_project:True").unwrap(),
        Check::Generic {
            attribute: "is_admin_project".into(),
            value: Value::Literal("True".into())
        }
    );
    for bad in ["role:a and", "(role:a", "role:a)", "nonsense", "http://x"] {
        assert!(parse("x", bad).is_err(), "{bad}");
    }
}

#[test]
fn policy_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        "# readers may not list\n\"ekko:backup:get_all\": \"rule:context_is_admin\"\nekko:backup:create: '!'\n",
    )
    .unwrap();
    let p = Policy::load(Some(&f), true).unwrap();
    let t: Target = &[("project_id", "p1")];
    let member = who("p1", &["member", "reader"]);
    assert!(!p.enforce("ekko:backup:get_all", &member, t));
    assert!(!p.enforce("ekko:backup:create", &member, t));
    assert!(
        p.enforce("ekko:backup:get", &member, t),
        "others keep their default"
    );
    std::fs::write(&f, "\"ekko:backup:get\": \"role:a and\"\n").unwrap();
    let err = Policy::load(Some(&f), true).unwrap_err().to_string();
    assert!(err.contains("policy.yaml:1"), "{err}");
    // The sample parses back to the defaults.
    std::fs::write(&f, sample().replace("#\"", "\"")).unwrap();
    assert!(Policy::load(Some(&f), true).is_ok());
}
