use super::*;

#[test]
fn templates_escape_html() {
    let page = ErrorPage {
        layout: Layout::new("x", "Cluster", "csrf"),
        heading: "<b>".into(),
        message: "<script>alert(1)</script>".into(),
        back: String::new(),
    };
    let html = page.render().unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&#60;script&#62;"), "{html}");
}

#[test]
fn superseded_deployments_say_where_they_are_kept_staged() {
    let superseded = pb::Deployment {
        id: "d1".into(),
        state: pb::DeploymentState::Superseded as i32,
        ..pb::Deployment::default()
    };
    let now = SystemTime::now();
    let every = deployment_row(&superseded, (3, 3), now);
    assert_eq!(
        every.notes,
        "kept staged on every edge (3): rolling back to it is instant"
    );
    assert_eq!(
        deployment_row(&superseded, (1, 3), now).notes,
        "kept staged on 1 of 3 edges"
    );
    assert_eq!(deployment_row(&superseded, (0, 3), now).notes, "");
    let live = pb::Deployment {
        state: pb::DeploymentState::Live as i32,
        ..superseded
    };
    assert_eq!(
        deployment_row(&live, (3, 3), now).notes,
        "",
        "the live one is served, not kept for a rollback"
    );
}
