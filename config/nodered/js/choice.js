// Remembers the compartment / worker chosen in the dropdowns and the configuration draft for the buttons.
flow.set("choice_" + msg.topic, msg.payload);
return null;
